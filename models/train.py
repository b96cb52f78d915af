"""Local training (returning the update vector new - old) and held-out evaluation.

Device-agnostic: CUDA with bf16 autocast where present, CPU otherwise. Batches are drawn by
walking seeded permutations of the client's examples, and dropout runs under the same seed
(inside :func:`torch.random.fork_rng`, so the caller's RNG state is left alone): the same
seed, data and weights give the same update on the same device.

Python's cyclic garbage collector is paused inside the training and evaluation loops (and
restored after): a step frees its tensors by reference counting, while a full collection walks
every live object, and with a few models alive in one process (a simulation, a test session)
those walks were measured to make MiniLM steps 7-20x slower.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from secagg.models.adapted import AdaptedModel
from secagg.models.batching import IGNORE_INDEX, make_batch
from secagg.models.data import Dataset
from secagg.models.device import autocast, resolve_device
from secagg.models.errors import AdapterConfigError, DataFormatError
from secagg.models.loading import TaskKind

__all__ = ["EvalResult", "TrainConfig", "TrainResult", "evaluate", "macro_f1", "train_local"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one client's local training in one round.

    Raises:
        AdapterConfigError: a non-positive count or rate, or an unknown optimizer.
    """

    steps: int
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_length: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AdapterConfigError(f"{name} must be a positive int, got {value!r}")
        if not self.learning_rate > 0 or not self.weight_decay >= 0:
            raise AdapterConfigError("learning_rate must be > 0 and weight_decay >= 0")
        if self.optimizer not in ("adamw", "sgd"):
            raise AdapterConfigError(f"unknown optimizer {self.optimizer!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise AdapterConfigError("max_grad_norm must be None or > 0")


@dataclass(frozen=True)
class TrainResult:
    """What local training returns: the update vector and how the loss went."""

    update: npt.NDArray[np.float32]  # new - old trainable weights, spec order
    losses: tuple[float, ...]  # training loss of each step
    seconds: float
    examples_seen: int

    @property
    def update_norm(self) -> float:
        """L2 norm of the update (what client-level DP clips)."""
        return float(np.linalg.norm(self.update.astype(np.float64)))


@dataclass(frozen=True)
class EvalResult:
    """Held-out metrics: accuracy and macro-F1 for classification, perplexity for causal LM."""

    examples: int
    loss: float  # mean cross-entropy per example (classification) or per target token
    accuracy: float | None = None
    macro_f1: float | None = None
    perplexity: float | None = None


def _check_data(adapted: AdaptedModel, data: Dataset) -> None:
    if data.task is not adapted.task:
        raise DataFormatError(
            f"data set is for {data.task.value}, the model for {adapted.task.value}"
        )
    if len(data) == 0:
        raise DataFormatError("data set is empty")
    if adapted.task is TaskKind.CLASSIFICATION and data.num_labels > (adapted.num_labels or 0):
        raise DataFormatError(
            f"data set has {data.num_labels} labels, the model's head {adapted.num_labels}"
        )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _index_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[np.ndarray]:
    """Batches of indices from consecutive permutations (an epoch boundary may split a batch)."""
    buffer: list[int] = []
    while True:
        while len(buffer) < batch_size:
            buffer.extend(torch.randperm(n, generator=generator).tolist())
        yield np.array(buffer[:batch_size], dtype=np.int64)
        buffer = buffer[batch_size:]


def train_local(
    adapted: AdaptedModel,
    data: Dataset,
    config: TrainConfig,
    *,
    seed: int,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train the adapter for ``config.steps`` steps on ``data``; return new - old weights.

    The model stays on the chosen device afterwards, holding the trained weights.

    Raises:
        TypeError: ``seed`` is not an int or ``config`` not a TrainConfig.
        DataFormatError: ``data`` is empty, for another task, or has more labels than the head.
        ValueError: CUDA requested but absent.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError("seed must be an int")
    if not isinstance(config, TrainConfig):
        raise TypeError("config must be a TrainConfig")
    _check_data(adapted, data)
    dev = resolve_device(device)
    model = adapted.model.to(dev)
    before = adapted.get_vector()
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        )
    else:
        opt = torch.optim.SGD(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    batches = _index_stream(len(data), config.batch_size, generator)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    with _gc_paused(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for _ in range(config.steps):
            batch = make_batch(adapted.tokenizer, data, next(batches), max_length=config.max_length)
            with autocast(dev):
                out = model(**{k: v.to(dev) for k, v in batch.items()})
            loss = out.loss.float()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    model.eval()
    # free the gradients and the optimizer's moments before the update vector is built: for
    # full weights they are three model-sized buffers (SmolLM2: 1.6 GB) at the peak otherwise
    opt.zero_grad(set_to_none=True)
    del opt
    update = adapted.get_vector()
    update -= before
    return TrainResult(update, tuple(losses), seconds, config.steps * config.batch_size)


def macro_f1(y_true: npt.NDArray[np.int64], y_pred: npt.NDArray[np.int64]) -> float:
    """Unweighted mean F1 over the labels that occur in ``y_true`` or ``y_pred``."""
    scores = []
    for label in np.union1d(y_true, y_pred):
        tp = int(np.sum((y_pred == label) & (y_true == label)))
        fp = int(np.sum((y_pred == label) & (y_true != label)))
        fn = int(np.sum((y_pred != label) & (y_true == label)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores)) if scores else 0.0


@torch.no_grad()
def evaluate(
    adapted: AdaptedModel,
    data: Dataset,
    *,
    batch_size: int = 32,
    max_length: int = 64,
    device: str | torch.device | None = None,
) -> EvalResult:
    """Metrics of the current weights on held-out ``data`` (in order, no shuffling).

    Raises:
        TypeError: ``batch_size`` or ``max_length`` is not a positive int.
        DataFormatError: ``data`` is empty, for another task, or has more labels than the head.
        ValueError: CUDA requested but absent.
    """
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{name} must be a positive int, got {value!r}")
    _check_data(adapted, data)
    dev = resolve_device(device)
    model = adapted.model.to(dev)
    model.eval()
    with _gc_paused():
        total_loss, count, preds = _eval_loop(adapted, data, dev, batch_size, max_length)
    loss = total_loss / max(count, 1)
    if adapted.task is TaskKind.CLASSIFICATION:
        y_pred = np.concatenate(preds).astype(np.int64)
        y_true = np.asarray(data.labels, dtype=np.int64)
        return EvalResult(
            len(data),
            loss,
            accuracy=float(np.mean(y_pred == y_true)),
            macro_f1=macro_f1(y_true, y_pred),
        )
    return EvalResult(len(data), loss, perplexity=math.exp(min(loss, 700.0)))


def _eval_loop(
    adapted: AdaptedModel, data: Dataset, dev: torch.device, batch_size: int, max_length: int
) -> tuple[float, int, list[npt.NDArray[np.int64]]]:
    """Summed loss, the count it is over (examples or target tokens), predicted labels."""
    total_loss, count = 0.0, 0
    preds: list[npt.NDArray[np.int64]] = []
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)), dtype=np.int64)
        batch = make_batch(adapted.tokenizer, data, idx, max_length=max_length)
        labels = batch.pop("labels").to(dev)
        with autocast(dev):
            logits = adapted.model(**{k: v.to(dev) for k, v in batch.items()}).logits.float()
        if adapted.task is TaskKind.CLASSIFICATION:
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            count += len(idx)
            preds.append(logits.argmax(dim=-1).cpu().numpy().astype(np.int64))
        else:
            # Virtual tokens (prompt tuning) are prepended: the last T positions are the text's.
            logits = logits[:, -labels.shape[1] :, :]
            target = labels[:, 1:]
            flat = logits[:, :-1].reshape(-1, logits.shape[-1])
            total_loss += float(
                F.cross_entropy(
                    flat, target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
                )
            )
            count += int((target != IGNORE_INDEX).sum())
    return total_loss, count, preds

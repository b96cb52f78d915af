"""The simple baselines every fine-tuning result stands beside (issue 23): the majority class
and a non-private linear probe on the frozen pretrained features the classification head reads.

- :func:`majority_accuracy`: predict the training set's most frequent label.
- :func:`head_features`: the vectors the head reads (its input, captured by a forward
  pre-hook), with the adapter switched off (PEFT's ``disable_adapter``): the pretrained
  model's own features, whatever the adapter.
- :func:`linear_probe`: multinomial logistic regression on standardised features, full-batch
  L-BFGS (``torch.optim.LBFGS``), its L2 strength chosen on a validation part carved out of the
  training records (never on the evaluation set), then refit on all training records and read
  on each evaluation set once.

Everything is deterministic in ``seed``; nothing here is private (the probe sees every
training record in the clear: it is the non-private reference a private job should beat).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from secagg.models.adapted import AdaptedModel
from secagg.models.batching import make_batch
from secagg.models.data import ClassificationData
from secagg.models.device import resolve_device

__all__ = ["ProbeResult", "head_features", "linear_probe", "majority_accuracy"]

L2_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)


def majority_accuracy(train_labels: Sequence[int] | npt.NDArray[np.int64],
                      eval_labels: Sequence[int] | npt.NDArray[np.int64]) -> float:
    """Accuracy on ``eval_labels`` of always predicting the most frequent training label
    (ties: the smallest label).

    Raises:
        ValueError: either set is empty.
    """
    train = np.asarray(train_labels, dtype=np.int64)
    ev = np.asarray(eval_labels, dtype=np.int64)
    if train.size == 0 or ev.size == 0:
        raise ValueError("majority_accuracy needs non-empty label sets")
    majority = int(np.bincount(train).argmax())
    return float(np.mean(ev == majority))


def _head(model: nn.Module) -> nn.Module:
    """The classification head: the last module named ``classifier`` (PEFT wraps it in a
    modules-to-save wrapper of that name, whose input is the head's).

    Raises:
        ValueError: the model has no module named ``classifier``.
    """
    found: list[nn.Module] = [m for name, m in model.named_modules()
                              if name.split(".")[-1] == "classifier"]
    if not found:
        raise ValueError("head_features needs a classification model with a 'classifier' head")
    return found[0]


def _pretrained(model: nn.Module) -> tuple[nn.Module, contextlib.AbstractContextManager[Any]]:
    """The module to run and the context that switches the adapter off: a prompt-learning
    adapter (prefix, prompt) lives in the PEFT wrapper's forward, so its base model is the
    pretrained one; a LoRA-style adapter is switched off with ``disable_adapter``."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return model, contextlib.nullcontext()
    config = configs[model.active_adapter]
    if getattr(config, "is_prompt_learning", False):
        base: nn.Module = model.get_base_model()  # type: ignore[operator]
        return base, contextlib.nullcontext()
    return model, model.disable_adapter()  # type: ignore[operator]


def head_features(adapted: AdaptedModel, data: ClassificationData, *, max_length: int,
                  batch_size: int = 64, device: str | torch.device | None = None
                  ) -> npt.NDArray[np.float32]:
    """The pretrained features the head reads, one row per example of ``data`` (in order).

    Raises:
        ValueError: not a classification model, or CUDA requested but absent.
    """
    dev = resolve_device(device)
    model = adapted.model.to(dev)
    model.eval()
    head = _head(model)
    rows: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        rows.append(args[0].detach().float().cpu())

    handle = head.register_forward_pre_hook(grab)
    run, adapter_off = _pretrained(model)
    try:
        with torch.no_grad(), adapter_off:
            for start in range(0, len(data), batch_size):
                idx = np.arange(start, min(start + batch_size, len(data)), dtype=np.int64)
                batch = make_batch(adapted.tokenizer, data, idx, max_length=max_length)
                batch.pop("labels")
                run(**{k: v.to(dev) for k, v in batch.items()})
    finally:
        handle.remove()
    feats = torch.cat(rows)
    if feats.dim() == 3:  # a head that reads every position (BERT's pooler input): CLS
        feats = feats[:, 0]
    return feats.numpy().astype(np.float32)


@dataclass(frozen=True)
class ProbeResult:
    """The probe's chosen L2 strength, its validation accuracy, and its accuracy on each
    evaluation set."""

    l2: float
    val_accuracy: float
    accuracy: Mapping[str, float]


def _fit(x: torch.Tensor, y: torch.Tensor, num_labels: int, l2: float) -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(x.shape[1], num_labels, dtype=torch.float64)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=200, tolerance_grad=1e-7,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return lin


def _accuracy(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((lin(x).argmax(dim=1) == y).double().mean())


def linear_probe(train_x: npt.NDArray[np.floating], train_y: npt.NDArray[np.integer],
                 evals: Mapping[str, tuple[npt.NDArray[np.floating], npt.NDArray[np.integer]]],
                 *, num_labels: int, seed: int, val_fraction: float = 0.15,
                 l2_grid: Sequence[float] = L2_GRID) -> ProbeResult:
    """Fit the probe on ``(train_x, train_y)`` with the L2 strength chosen on a seeded
    validation part of them, refit on all of them, and score each of ``evals`` once.

    Raises:
        ValueError: shapes disagree, too few training records to hold out a validation part,
            or an empty ``l2_grid``.
    """
    if train_x.ndim != 2 or train_x.shape[0] != len(train_y):
        raise ValueError(f"train_x {train_x.shape} does not match {len(train_y)} labels")
    if not l2_grid:
        raise ValueError("l2_grid is empty")
    n = train_x.shape[0]
    n_val = round(val_fraction * n)
    if n_val < 1 or n - n_val < 1:
        raise ValueError(f"{n} training records cannot hold out a validation part")
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6

    def tensor(x: npt.NDArray[np.floating]) -> torch.Tensor:
        return torch.from_numpy(((x - mean) / std).astype(np.float64))

    x, y = tensor(train_x), torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    val, fit = perm[:n_val], perm[n_val:]
    scores = {l2: _accuracy(_fit(x[fit], y[fit], num_labels, l2), x[val], y[val])
              for l2 in l2_grid}
    best = max(l2_grid, key=lambda l2: (scores[l2], -l2))  # ties: the stronger penalty
    final = _fit(x, y, num_labels, best)
    acc = {name: _accuracy(final, tensor(ex), torch.from_numpy(np.asarray(ey, dtype=np.int64)))
           for name, (ex, ey) in evals.items()}
    return ProbeResult(l2=best, val_accuracy=scores[best], accuracy=acc)

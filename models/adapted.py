"""A pretrained model with one adapter applied, its ParamSpec, and flat-vector access.

:func:`build_model` is the one call a client or server makes: load the model offline, apply
the adapter (initialised under ``init_seed``, so every party starts from identical weights),
and derive the :class:`secagg.models.paramspec.ParamSpec` whose digest all parties compare before
round 1. The digest covers the layout, the task, the adapter configuration, the seed and (by
default) a SHA-256 of the loaded base weights, so two parties holding different pretrained
weights (e.g. a 4-bit GGUF and the original checkpoint) disagree at once.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from secagg.models.adapters import AdapterCodec, AdapterConfig, get_codec
from secagg.models.loading import TaskKind, load_model
from secagg.models.paramspec import ParamSpec
from secagg.models.pooling import Pooling

__all__ = ["AdaptedModel", "build_model", "weights_sha256"]


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter's name, shape, dtype and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}\n".encode())
        data = p.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        h.update(data.numpy().data)
    return h.hexdigest()


@dataclass
class AdaptedModel:
    """A model wrapped for training plus what is needed to move its adapter as a vector."""

    model: torch.nn.Module
    tokenizer: Any
    task: TaskKind
    codec: AdapterCodec
    config: AdapterConfig
    spec: ParamSpec
    num_labels: int | None
    pooling: Pooling | None = None  # what the classification head reads (None: causal LM)

    @property
    def num_trainable(self) -> int:
        """Length of the flat vector (number of trained values)."""
        return self.spec.size

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights by canonical name (detached, sharing the model's memory)."""
        return self.codec.state_dict(self.model)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Write trainable weights strictly (see :meth:`AdapterCodec.load_state_dict`).

        Raises:
            MissingKeysError, UnexpectedKeysError, ShapeMismatchError, DtypeMismatchError,
            ParamSpecError: ``state`` does not match the spec exactly.
        """
        self.codec.load_state_dict(self.model, state, self.spec)

    def get_vector(self, *, out: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
        """The trainable weights as one float32 vector in spec order (optionally into ``out``).

        Raises:
            TypeError, VectorLengthError: a bad ``out`` buffer.
        """
        return self.spec.flatten(self.state_dict(), out=out)

    def set_vector(self, vector: npt.NDArray[np.floating[Any]]) -> None:
        """Write a flat vector (float32 or float64) back into the model.

        Raises:
            TypeError: not a float ndarray.
            VectorLengthError: wrong rank or length.
            ParamSpecError: NaN/infinity, or a value not written.
        """
        self.load_state_dict(self.spec.unflatten(vector))

    def apply_update(self, delta: npt.NDArray[np.floating[Any]]) -> None:
        """Add an (aggregated) update to the current weights: w <- w + delta.

        Raises:
            as :meth:`set_vector`, for ``delta``.
        """
        self.spec.check_vector(delta)
        current = self.get_vector()
        current += delta.astype(np.float32, copy=False)
        self.set_vector(current)


def build_model(
    source: str | Path,
    *,
    task: TaskKind,
    adapter: AdapterConfig,
    init_seed: int,
    num_labels: int | None = None,
    fingerprint_base: bool = True,
    dtype: torch.dtype = torch.float32,
    pooling: Pooling | None = None,
) -> AdaptedModel:
    """Load ``source`` for ``task`` and apply ``adapter``; all random init under ``init_seed``.

    ``pooling`` (classification only; None: the model's own, see
    :func:`secagg.models.pooling.default_pooling`) enters the spec's metadata, so parties
    whose heads read different features disagree on the digest.

    Raises:
        TypeError: ``init_seed`` is not an int, or ``task``/``adapter`` have wrong types.
        AssetNotFoundError, UnsupportedModelError: see :func:`secagg.models.loading.load_model`
            and :meth:`AdapterCodec.wrap`.
    """
    if not isinstance(init_seed, int) or isinstance(init_seed, bool):
        raise TypeError("init_seed must be an int")
    if not isinstance(adapter, AdapterConfig):
        raise TypeError("adapter must be an AdapterConfig")
    codec = get_codec(adapter.kind)
    # fork_rng: seed the fresh head and the adapter init without disturbing the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        loaded = load_model(source, task=task, num_labels=num_labels, dtype=dtype, pooling=pooling)
        base_digest = weights_sha256(loaded.model) if fingerprint_base else "not-computed"
        with warnings.catch_warnings():
            # peft calls a transformers method that transformers 5 marks deprecated.
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            model = codec.wrap(loaded, adapter)
    meta = {
        "task": task.value,
        "model_type": loaded.model_type,
        "num_labels": str(num_labels),
        "init_seed": str(init_seed),
        "base_sha256": base_digest,
        **adapter.to_meta(loaded.model_type),
    }
    if loaded.pooling is not None:
        meta["pooling"] = loaded.pooling.value
    spec = ParamSpec.from_state_dict(codec.state_dict(model), meta=meta)
    return AdaptedModel(
        model=model,
        tokenizer=loaded.tokenizer,
        task=task,
        codec=codec,
        config=adapter,
        spec=spec,
        num_labels=num_labels,
        pooling=loaded.pooling,
    )

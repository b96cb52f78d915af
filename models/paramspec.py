"""ParamSpec: the agreed layout of the trainable parameters as one flat float32 vector.

Every party builds its spec from its own model and compares digests before round 1; a
state dict or vector that does not match the spec exactly (a missing or extra name, a
different shape or dtype, a wrong length) is an error, never silently skipped or padded.

Layout: tensors sorted by name, each flattened in row-major (C) order, concatenated. The
flat vector is always float32 (the aggregation ring's input); parameters of another floating
dtype are cast on the way out and back.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from secagg.models.errors import (
    DtypeMismatchError,
    MissingKeysError,
    ParamSpecError,
    ShapeMismatchError,
    SpecMismatchError,
    UnexpectedKeysError,
    VectorLengthError,
)

__all__ = ["SPEC_VERSION", "ParamSpec", "TensorSpec"]

SPEC_VERSION = "secagg.paramspec.v1"

_FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the layout: its name, shape and dtype name (e.g. ``"float32"``).

    Raises:
        TypeError: a field has the wrong type.
        ParamSpecError: an empty name, a negative dimension or a non-floating dtype.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not isinstance(self.dtype, str):
            raise TypeError("name and dtype must be str")
        if not isinstance(self.shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in self.shape
        ):
            raise TypeError(f"shape of {self.name!r} must be a tuple of int")
        if not self.name:
            raise ParamSpecError("tensor name must not be empty")
        if any(d < 0 for d in self.shape):
            raise ParamSpecError(f"shape of {self.name!r} has a negative dimension")
        if self.dtype not in _FLOAT_DTYPES:
            raise ParamSpecError(
                f"dtype of {self.name!r} must be one of {sorted(_FLOAT_DTYPES)}, got {self.dtype!r}"
            )

    @property
    def numel(self) -> int:
        """Number of values of the tensor."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def torch_dtype(self) -> torch.dtype:
        """The tensor's dtype as a torch dtype."""
        return _FLOAT_DTYPES[self.dtype]


@dataclass(frozen=True)
class ParamSpec:
    """Sorted tensor specs plus string metadata (model, task, adapter config) and a digest.

    Build with :meth:`from_state_dict` (or :meth:`from_dict` for a received spec). The digest
    is SHA-256 over a canonical JSON encoding of the version tag, every (name, shape, dtype)
    and the metadata, so it differs whenever the layout or the adapter configuration does.

    Raises:
        TypeError: ``tensors`` or ``meta`` hold values of the wrong type.
        ParamSpecError: names are not strictly sorted (duplicates included).
    """

    tensors: tuple[TensorSpec, ...]
    meta: tuple[tuple[str, str], ...] = ()
    offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    digest: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.tensors, tuple) or not all(
            isinstance(t, TensorSpec) for t in self.tensors
        ):
            raise TypeError("tensors must be a tuple of TensorSpec")
        if not isinstance(self.meta, tuple) or not all(
            isinstance(kv, tuple) and len(kv) == 2 and all(isinstance(s, str) for s in kv)
            for kv in self.meta
        ):
            raise TypeError("meta must be a tuple of (str, str) pairs")
        names = [t.name for t in self.tensors]
        if any(a >= b for a, b in itertools.pairwise(names)):
            raise ParamSpecError("tensor names must be strictly sorted and unique")
        keys = [k for k, _ in self.meta]
        if keys != sorted(set(keys)):
            raise ParamSpecError("meta keys must be strictly sorted and unique")
        offsets = [0]
        for t in self.tensors:
            offsets.append(offsets[-1] + t.numel)
        object.__setattr__(self, "offsets", tuple(offsets))
        object.__setattr__(self, "digest", hashlib.sha256(self._canonical()).hexdigest())

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], *, meta: Mapping[str, str] | None = None
    ) -> ParamSpec:
        """The spec of ``state`` (sorted by name), with optional metadata folded into the digest.

        Raises:
            TypeError: a value is not a tensor, or meta is not str -> str.
            ParamSpecError: a tensor is not of a floating dtype, or ``state`` is empty.
        """
        if not state:
            raise ParamSpecError("a ParamSpec needs at least one tensor")
        specs = []
        for name in sorted(state):
            t = state[name]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"state[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
            specs.append(TensorSpec(name, tuple(int(d) for d in t.shape), _dtype_name(t.dtype)))
        return cls(tuple(specs), tuple(sorted((meta or {}).items())))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description; :meth:`from_dict` rebuilds it and checks the digest."""
        return {
            "version": SPEC_VERSION,
            "tensors": [[t.name, list(t.shape), t.dtype] for t in self.tensors],
            "meta": dict(self.meta),
            "digest": self.digest,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Raises:
            ParamSpecError: wrong version, malformed entries, or a digest that does not match.
        """
        try:
            if data["version"] != SPEC_VERSION:
                raise ParamSpecError(f"unsupported spec version {data['version']!r}")
            tensors = tuple(
                TensorSpec(str(n), tuple(int(d) for d in s), str(dt))
                for n, s, dt in data["tensors"]
            )
            spec = cls(tensors, tuple(sorted((str(k), str(v)) for k, v in data["meta"].items())))
            claimed = data["digest"]
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ParamSpecError):
                raise
            raise ParamSpecError(f"malformed ParamSpec description: {exc!r}") from exc
        if spec.digest != claimed:
            raise SpecMismatchError("ParamSpec digest does not match its contents")
        return spec

    # -- properties ---------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names in layout order (sorted)."""
        return tuple(t.name for t in self.tensors)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return self.offsets[-1]

    def meta_dict(self) -> dict[str, str]:
        """The metadata as a dict."""
        return dict(self.meta)

    def require_same(self, other: ParamSpec) -> None:
        """Check that ``other`` describes the same layout and configuration.

        Raises:
            TypeError: ``other`` is not a ParamSpec.
            SpecMismatchError: the digests differ (the message names the first difference).
        """
        if not isinstance(other, ParamSpec):
            raise TypeError("other must be a ParamSpec")
        if self.digest == other.digest:
            return
        diff = "metadata"
        for a, b in zip(self.tensors, other.tensors, strict=False):
            if a != b:
                diff = f"tensor {a.name!r} {a.shape}/{a.dtype} vs {b.name!r} {b.shape}/{b.dtype}"
                break
        else:
            if len(self.tensors) != len(other.tensors):
                diff = f"{len(self.tensors)} vs {len(other.tensors)} tensors"
            else:
                mine, theirs = dict(self.meta), dict(other.meta)
                keys = sorted(k for k in mine | theirs if mine.get(k) != theirs.get(k))
                diff = f"metadata keys {keys}"
        raise SpecMismatchError(f"ParamSpec digests differ ({diff})")

    # -- strict checks ------------------------------------------------------------------------

    def check_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Check that ``state`` has exactly the spec's names, shapes and dtypes.

        Raises:
            TypeError: a value is not a tensor.
            MissingKeysError, UnexpectedKeysError: the key sets differ.
            ShapeMismatchError, DtypeMismatchError: a tensor differs from its spec.
        """
        expected = set(self.names)
        present = set(state)
        if expected - present:
            raise MissingKeysError(sorted(expected - present))
        if present - expected:
            raise UnexpectedKeysError(sorted(present - expected))
        for t in self.tensors:
            value = state[t.name]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"state[{t.name!r}] must be a torch.Tensor")
            if tuple(value.shape) != t.shape:
                raise ShapeMismatchError(
                    f"{t.name!r}: shape {tuple(value.shape)} but the spec says {t.shape}"
                )
            if _dtype_name(value.dtype) != t.dtype:
                raise DtypeMismatchError(
                    f"{t.name!r}: dtype {_dtype_name(value.dtype)} but the spec says {t.dtype}"
                )

    def check_vector(self, vector: object, *, require_finite: bool = True) -> None:
        """Check that ``vector`` is a 1-D float32/float64 ndarray of length :attr:`size`.

        Raises:
            TypeError: not an ndarray, or not of dtype float32/float64.
            VectorLengthError: wrong rank or length.
            ParamSpecError: ``require_finite`` and the vector holds NaN or infinity.
        """
        if not isinstance(vector, np.ndarray):
            raise TypeError(f"vector must be a numpy ndarray, got {type(vector).__name__}")
        if vector.dtype not in (np.float32, np.float64):
            raise TypeError(f"vector must have dtype float32 or float64, got {vector.dtype}")
        if vector.ndim != 1 or vector.shape[0] != self.size:
            raise VectorLengthError(
                f"vector has shape {vector.shape}, the spec needs ({self.size},)"
            )
        if require_finite and not bool(np.isfinite(vector).all()):
            raise ParamSpecError("vector holds NaN or infinite values")

    # -- flatten / unflatten ------------------------------------------------------------------

    def flatten(
        self, state: Mapping[str, torch.Tensor], *, out: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        """Concatenate ``state`` (checked strictly) into one float32 vector.

        ``out``, when given, is filled in place (no second copy of a large vector).

        Raises:
            every error of :meth:`check_state_dict`; VectorLengthError/TypeError for a bad ``out``.
        """
        self.check_state_dict(state)
        if out is None:
            out = np.empty(self.size, dtype=np.float32)
        elif not isinstance(out, np.ndarray) or out.dtype != np.float32:
            raise TypeError("out must be a float32 ndarray")
        elif out.ndim != 1 or out.shape[0] != self.size or not out.flags.c_contiguous:
            raise VectorLengthError(f"out must be contiguous with shape ({self.size},)")
        flat = torch.from_numpy(out)
        with torch.no_grad():
            for t, start, stop in zip(self.tensors, self.offsets, self.offsets[1:], strict=False):
                flat[start:stop].copy_(state[t.name].detach().reshape(-1))
        return out

    def unflatten(
        self, vector: npt.NDArray[np.floating[Any]], *, require_finite: bool = True
    ) -> dict[str, torch.Tensor]:
        """Split ``vector`` into fresh CPU tensors of the spec's names, shapes and dtypes.

        Raises:
            every error of :meth:`check_vector`.
        """
        self.check_vector(vector, require_finite=require_finite)
        src = torch.from_numpy(np.ascontiguousarray(vector))
        return {
            t.name: src[start:stop].reshape(t.shape).to(t.torch_dtype, copy=True)
            for t, start, stop in zip(self.tensors, self.offsets, self.offsets[1:], strict=False)
        }

    def chunk_slices(self, max_values: int) -> list[slice]:
        """Cut ``range(size)`` into consecutive slices of at most ``max_values`` values.

        Large vectors (full fine-tuning) are masked and aggregated chunk by chunk.

        Raises:
            TypeError: ``max_values`` is not an int.
            ValueError: ``max_values`` < 1.
        """
        if not isinstance(max_values, int) or isinstance(max_values, bool):
            raise TypeError("max_values must be an int")
        if max_values < 1:
            raise ValueError("max_values must be >= 1")
        return [slice(a, min(a + max_values, self.size)) for a in range(0, self.size, max_values)]

    def _canonical(self) -> bytes:
        body = {
            "version": SPEC_VERSION,
            "tensors": [[t.name, list(t.shape), t.dtype] for t in self.tensors],
            "meta": dict(self.meta),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

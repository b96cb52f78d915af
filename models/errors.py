"""The exceptions of ``models/``: one hierarchy under :class:`ModelsError`.

:class:`ModelsError` derives from :class:`secagg.errors.SecAggError`, so one ``except`` clause
catches every deliberate error of the library. Errors about a bad value (a wrong key set, a
wrong shape, a malformed data file) also derive from :class:`ValueError`; a missing packaged
asset also derives from :class:`FileNotFoundError`.
"""

from __future__ import annotations

from secagg.errors import SecAggError

__all__ = [
    "AdapterConfigError",
    "AssetNotFoundError",
    "DataFormatError",
    "DtypeMismatchError",
    "MissingKeysError",
    "ModelsError",
    "ParamSpecError",
    "PartitionError",
    "ShapeMismatchError",
    "SpecMismatchError",
    "UnexpectedKeysError",
    "UnsupportedModelError",
    "VectorLengthError",
]


class ModelsError(SecAggError):
    """Base class of every error raised on purpose by ``models/``."""


class AssetNotFoundError(ModelsError, FileNotFoundError):
    """A packaged model or data set (or a user path) is not where it should be."""


class UnsupportedModelError(ModelsError, ValueError):
    """The model, its architecture or the requested task/adapter combination is not supported."""


class AdapterConfigError(ModelsError, ValueError):
    """An adapter or training configuration holds an invalid value."""


class ParamSpecError(ModelsError, ValueError):
    """A state dict or flat vector does not match the agreed :class:`ParamSpec`."""


class MissingKeysError(ParamSpecError):
    """Names the spec requires are absent. ``.keys`` holds them, sorted."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = sorted(keys)
        super().__init__(f"missing {len(self.keys)} key(s): {_preview(self.keys)}")


class UnexpectedKeysError(ParamSpecError):
    """Names the spec does not know are present. ``.keys`` holds them, sorted."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = sorted(keys)
        super().__init__(f"unexpected {len(self.keys)} key(s): {_preview(self.keys)}")


class ShapeMismatchError(ParamSpecError):
    """A tensor's shape differs from the spec's."""


class DtypeMismatchError(ParamSpecError):
    """A tensor's dtype differs from the spec's."""


class VectorLengthError(ParamSpecError):
    """A flat vector has the wrong length, rank or dtype for the spec."""


class SpecMismatchError(ParamSpecError):
    """Two parties' specs (or a spec and a model) disagree: their digests differ."""


class DataFormatError(ModelsError, ValueError):
    """A data file (CSV, JSONL, packaged corpus) is malformed; the message names file and line."""


class PartitionError(ModelsError, ValueError):
    """A client partition cannot be built with the requested parameters."""


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")

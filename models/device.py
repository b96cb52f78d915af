"""Pick the compute device and the matching autocast: CUDA with bf16 where present, else CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["autocast", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None picks ``cuda`` when available, else ``cpu``.

    Raises:
        TypeError: ``device`` is neither None, str nor torch.device.
        ValueError: CUDA was asked for but is not available (or the string is not a device).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str | torch.device):
        raise TypeError(f"device must be None, str or torch.device, got {type(device).__name__}")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but is not available")
    return resolved


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on a CUDA device that supports it; nothing on other devices.

    Parameters stay float32 (so the flat vector does too); only matmuls run in bf16.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield

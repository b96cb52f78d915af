"""Errors of the differential-privacy layer."""

from __future__ import annotations

from secagg.fl_core.errors import FlCoreError

__all__ = ["DpConfigError"]


class DpConfigError(FlCoreError, ValueError):
    """A DP setting is nonsense (negative clip, delta outside (0, 1), unreachable epsilon...)."""

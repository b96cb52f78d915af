"""Removable noise ("add, then remove"): which components a cohort has, and the signature
quorum a client needs on one survivor set before it releases any (:mod:`.client`)."""

from __future__ import annotations

__all__ = ["release_quorum", "removable_levels"]


def removable_levels(n: int, t: int) -> tuple[int, ...]:
    """The removable noise components of a cohort of ``n`` with threshold ``t``: ``1..n-t``."""
    return tuple(range(1, n - t + 1))


def release_quorum(n: int, t: int, corrupt: int) -> int:
    """Signatures on one survivor set, over the cohort, before a client releases noise.

    With ``q = max(n + c - t + 1, floor((n + c) / 2) + 1)`` signers, at most ``c`` of them
    corrupt: two different sets cannot both reach ``q`` (they would share an honest signer),
    and no other set can reach even ``t`` signatures anywhere (``q - c`` honest signers of
    this set plus ``t - c`` of the other exceed the ``n - c`` honest clients), so every share
    any honest client reveals is revealed under this one set, and the sum is over exactly it.
    """
    return max(n + corrupt - t + 1, (n + corrupt) // 2 + 1)

"""The SecAgg+ neighbour graph: a Harary graph on a permutation every party computes alike.

The graph is a function of the round context alone: its nodes are *all* the round's client
ids and its seed is ``SHA-256(tag || context digest)``, fixed before anyone advertises. So the
server can neither grind the seed nor, by choosing which advertised clients to announce, steer
whom a client shares with: clients that never advertise are simply absent neighbours (and
count as dropouts). The permutation comes from the keyed AES PRG
(:class:`secagg.prg.MaskPRG`): the i-th smallest id gets the i-th 64-bit word of the stream and
ids are sorted by it (ties, at probability ~n^2/2^64, break by id). Position ``p`` is joined to
positions ``p +- 1 .. p +- k/2`` (mod n): ``k``-regular, and each node's neighbourhood is a
uniformly random ``k``-subset of the others (the graph of :mod:`secagg.protocols.params`). With
``k >= n - 1`` the graph is complete: that is SecAgg.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np

from secagg.prg import MaskPRG
from secagg.protocols.context import RoundContext

__all__ = ["NeighbourGraph", "graph_seed", "round_graph"]

_SEED_TAG = b"secagg/v1/graph-seed"
_PERM_LABEL = b"secagg/v1/graph/permutation"


def graph_seed(ctx: RoundContext) -> bytes:
    """The round's public 32-byte graph seed."""
    return hashlib.sha256(_SEED_TAG + ctx.digest).digest()


class NeighbourGraph:
    """Neighbourhoods of a ``k``-regular Harary graph (or the complete graph) on ``members``."""

    __slots__ = ("_complete", "_half", "_member_set", "_members", "_perm", "_pos")

    def __init__(self, seed: bytes, members: Sequence[int], k: int) -> None:
        """Lay ``members`` (distinct ids) out on the seeded permutation.

        Raises:
            ValueError: ``members`` not distinct, ``k < 0``, or a sparse ``k`` that is odd.
        """
        m = len(members)
        if len(set(members)) != m:
            raise ValueError("members must be distinct")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self._members = tuple(sorted(members))
        self._member_set = frozenset(self._members)
        self._complete = k >= m - 1
        if not self._complete and k % 2:
            raise ValueError(f"a sparse Harary graph needs an even k, got {k}")
        self._half = k // 2
        self._perm: tuple[int, ...] = ()
        self._pos: dict[int, int] = {}
        if not self._complete:
            self._perm = _permutation(seed, self._members)
            self._pos = {u: p for p, u in enumerate(self._perm)}

    @property
    def members(self) -> tuple[int, ...]:
        """The graph's nodes, ascending."""
        return self._members

    @property
    def degree(self) -> int:
        """Neighbours per node."""
        return len(self._members) - 1 if self._complete else 2 * self._half

    def neighbours(self, u: int) -> frozenset[int]:
        """The neighbours of ``u`` (never ``u`` itself).

        Raises:
            KeyError: ``u`` is not a member.
        """
        if self._complete:
            if u not in self._member_set:
                raise KeyError(u)
            return self._member_set - {u}
        p, m = self._pos[u], len(self._perm)
        return frozenset(
            self._perm[(p + d) % m] for j in range(1, self._half + 1) for d in (j, -j)
        )


def _permutation(seed: bytes, members: tuple[int, ...]) -> tuple[int, ...]:
    words = np.zeros(2 * len(members), dtype=np.uint32)
    MaskPRG(seed, label=_PERM_LABEL).fill(words, bits=32)
    keys = words[0::2].astype(np.uint64) | (words[1::2].astype(np.uint64) << np.uint64(32))
    order = np.lexsort((np.asarray(members, dtype=np.int64), keys))
    return tuple(members[int(i)] for i in order)


@functools.lru_cache(maxsize=32)
def _cached(seed: bytes, members: tuple[int, ...], k: int) -> NeighbourGraph:
    return NeighbourGraph(seed, members, k)


def round_graph(ctx: RoundContext) -> NeighbourGraph:
    """The graph of the round over all its client ids (shared and cached: public data)."""
    return _cached(graph_seed(ctx), ctx.client_ids, ctx.config.k)

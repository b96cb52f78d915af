"""The round's neighbour graph as one int32 array, for the server's per-stage set algebra.

Every stage the server asks, for every client, which of its neighbours are in some set (who
advertised, shared keys, survived). :meth:`NeighbourGraph.neighbours` builds a fresh frozenset
each time; here each sparse neighbourhood is read once into row ``i`` of an ``(n, k)`` array of
sorted row indices (``4 k`` bytes per client), and a set of clients is a boolean mask, so each
question is a numpy gather. The complete graph (SecAgg) keeps no array: a client's neighbours
in a set are the set without it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.protocols.graph import NeighbourGraph

__all__ = ["Adjacency"]

Mask = npt.NDArray[np.bool_]


class Adjacency:
    """Neighbourhoods of ``graph`` over the sorted ``ids`` (its members)."""

    __slots__ = ("_graph", "_ids", "_index", "_rows")

    def __init__(self, graph: NeighbourGraph) -> None:
        """Index the graph's members (rows are read on first use).

        Raises:
            ValueError: the graph has no members.
        """
        members = graph.members
        if not members:
            raise ValueError("graph has no members")
        self._graph = graph
        self._ids = np.asarray(members, dtype=np.int64)
        self._index = {u: i for i, u in enumerate(members)}
        self._rows: npt.NDArray[np.int32] | None = None

    @property
    def complete(self) -> bool:
        """True for the complete graph (no array is kept)."""
        return self._graph.degree >= len(self._ids) - 1

    def _table(self) -> npt.NDArray[np.int32]:
        if self._rows is None:
            k = self._graph.degree
            rows = np.empty((len(self._ids), k), dtype=np.int32)
            index = self._index
            for i, u in enumerate(self._graph.members):
                rows[i] = sorted(index[v] for v in self._graph.neighbours(u))
            self._rows = rows
        return self._rows

    def mask(self, ids: Iterable[int]) -> Mask:
        """The boolean mask of a set of client ids.

        Raises:
            KeyError: an id is not a member.
        """
        out = np.zeros(len(self._ids), dtype=np.bool_)
        out[[self._index[u] for u in ids]] = True
        return out

    def neighbours(self, u: int) -> frozenset[int]:
        """``u``'s neighbours.

        Raises:
            KeyError: ``u`` is not a member.
        """
        if self.complete:
            return self._graph.neighbours(u)
        return frozenset(self._ids[self._table()[self._index[u]]].tolist())

    def neighbours_in(self, u: int, within: Mask) -> list[int]:
        """``u``'s neighbours in the set ``within``, ascending.

        Raises:
            KeyError: ``u`` is not a member.
        """
        i = self._index[u]
        if self.complete:
            sel = within.copy()
            sel[i] = False
            return self._ids[sel].tolist()  # type: ignore[no-any-return]
        row = self._table()[i]
        return self._ids[row[within[row]]].tolist()  # type: ignore[no-any-return]

    def counts(self, sources: Mask) -> npt.NDArray[np.int64]:
        """For every member (row order), how many of its neighbours are in ``sources``."""
        if self.complete:
            total = int(sources.sum())
            return total - sources.astype(np.int64)
        rows = self._table()[sources]
        return np.bincount(rows.ravel(), minlength=len(self._ids)).astype(np.int64)

    def row(self, u: int) -> int:
        """The row (position among the sorted ids) of ``u``.

        Raises:
            KeyError: ``u`` is not a member.
        """
        return self._index[u]

    def __repr__(self) -> str:
        kind: Any = "complete" if self.complete else f"degree {self._graph.degree}"
        return f"Adjacency({len(self._ids)} clients, {kind})"

"""The SecAgg+ neighbour graph: a Harary graph on a permutation no single party can choose.

Why the seed is not a function of the context alone. The server picks each round's cohort
(and, within the rate limit of :class:`secagg.fl_core.runtime.policy.RoundClock`, its round
id). When the graph seed was a public digest of the context, a server controlling a few
clients could try cohorts offline until a victim's ``k`` neighbours held ``t`` of its sybils,
then rebuild both of the victim's secrets (``tests/protocols/test_graph_grinding.py`` runs that
attack: 6 sybils of 100 clients, cohorts of 20, a few hundred offline tries).

Commit, then reveal. Every client draws a fresh 32-byte nonce when it advertises its keys and
sends only :func:`commitment` (SHA-256 over the context digest, its id and the nonce; signed
with its keys in active mode). The server closes the advertise stage and sends every
advertiser the one list of commitments; each answers with its nonce. Every committer must
reveal (the server aborts the round otherwise, which costs it a rate-limited round id), and
each client checks every reveal against its commitment before it uses the graph. The seed is
:func:`graph_seed`: SHA-256 over the context digest and every ``(id, nonce)`` pair.

So the seed a client uses contains its own fresh nonce, unknown to the server until the server
has fixed the list of commitments (the only thing it chooses after the cohort): the victim's
graph is a uniformly random Harary graph whatever the server and its sybils did, and each
abort-and-retry draws a fresh one. Clients shown different commitment lists compute different
seeds; the seed is bound into the share encryption and the consistency signatures
(:mod:`secagg.protocols.labels`), so such clients never exchange a share or count each other's
signature: a split view acts as dropouts, which the threshold already covers. The price is one
round trip (the reveal stage) and ``36 * |U1|`` bytes of reveals in each roster.

The graph's nodes are *all* the round's client ids (the cohort), so which advertisers the
server announces never changes whom a client may share with: clients that never advertise are
absent neighbours (they count as dropouts). The permutation comes from the keyed AES PRG
(:class:`secagg.prg.MaskPRG`): the i-th smallest id gets the i-th 64-bit word of the stream and
ids are sorted by it (ties, at probability ~n^2/2^64, break by id). Position ``p`` is joined to
positions ``p +- 1 .. p +- k/2`` (mod n): ``k``-regular, and each node's neighbourhood is a
uniformly random ``k``-subset of the others (the graph of :mod:`secagg.protocols.params`). With
``k >= n - 1`` the graph is complete: that is SecAgg.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from secagg.prg import MaskPRG
from secagg.protocols.context import RoundContext

__all__ = ["NONCE_BYTES", "NeighbourGraph", "commitment", "graph_seed", "round_graph"]

NONCE_BYTES = 32
_SEED_TAG = b"secagg/v2/graph-seed"
_COMMIT_TAG = b"secagg/v2/graph-commitment"
_PERM_LABEL = b"secagg/v1/graph/permutation"


def commitment(ctx: RoundContext, client_id: int, nonce: bytes) -> bytes:
    """What client ``client_id`` advertises for its graph nonce: SHA-256 over a tag, the
    context digest, its id and the nonce (hiding, since the nonce is 32 fresh random bytes;
    binding, as SHA-256 is collision resistant)."""
    return hashlib.sha256(_COMMIT_TAG + ctx.digest + struct.pack(">I", client_id)
                          + nonce).digest()


def graph_seed(ctx: RoundContext, reveals: Iterable[tuple[int, bytes]]) -> bytes:
    """The round's 32-byte graph seed from every committer's revealed nonce.

    Raises:
        ValueError: ``reveals`` is empty, repeats an id or holds a nonce that is not 32 bytes.
    """
    pairs = sorted(reveals)
    if not pairs or len({u for u, _ in pairs}) != len(pairs):
        raise ValueError("reveals must be non-empty with distinct ids")
    h = hashlib.sha256(_SEED_TAG + ctx.digest + struct.pack(">I", len(pairs)))
    for u, nonce in pairs:
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"nonce of {u} must be {NONCE_BYTES} bytes")
        h.update(struct.pack(">I", u) + nonce)
    return h.digest()


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


def round_graph(ctx: RoundContext, seed: bytes) -> NeighbourGraph:
    """The graph of the round over all its client ids for the agreed ``seed`` (shared and
    cached: public once the nonces are revealed)."""
    return _cached(seed, ctx.client_ids, ctx.config.k)

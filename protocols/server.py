"""The SecAgg / SecAgg+ server: collects each stage, relays, and unmasks the sum.

Sets of the paper: ``U1`` advertised (and committed to a graph nonce; every one of them must
reveal it, or the round aborts: :mod:`secagg.protocols.graph`), ``U2`` shared keys, ``U3``
sent a masked input (their inputs are the aggregate), ``U4`` signed the survivor set (active
mode), ``U5`` answered the unmask request. The server stops with :class:`ThresholdError` as
soon as some secret it will need has fewer than ``t`` possible holders left, before asking
anyone to reveal anything.
Masked inputs are added into one running ring sum on receipt, so memory stays at one vector.
Unmasking is batched (:mod:`.recovery`): secrets that share holders share one Lagrange
precomputation, and all masks are stripped in one chunked pass over the sum, on
:attr:`SecAggServer.workers` threads. :attr:`SecAggServer.trace` (optional) is told the name
of each step as it starts (``decode``, ``accept``, ``unpack``, ``close``, ``reconstruct``,
``key_agreement``, ``mask_expansion``, ``aggregate``; None when the call returns), so a
caller with a clock can time them.

Removable noise: every unmask request carries ``|U3|``; a client that added removable noise
components answers with the seeds of those this count makes excess (checked here: exactly the
levels ``j > n - |U3|``, or none), collected in :attr:`SecAggServer.released_noise` for the
application to expand and subtract. In active mode the requests carry every consistency
signature while the cohort has at most ``RELAY_ALL_SIGNATURES_UP_TO`` clients (so a client of
a sparse SecAgg+ graph can count the release quorum); above it, only the neighbourhoods'.
"""

from __future__ import annotations

import bisect

import numpy as np
import numpy.typing as npt

from secagg.errors import InvalidSignature
from secagg.packing import unpack_add_into
from secagg.protocols import labels
from secagg.protocols.adjacency import Adjacency
from secagg.protocols.client import removable_levels
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import decode_aggregate
from secagg.protocols.errors import LocalProtocolError, RemoteProtocolError, ThresholdError
from secagg.protocols.graph import NeighbourGraph, commitment, graph_seed, round_graph
from secagg.protocols.holders import ring_order
from secagg.protocols.messages import (
    AdvertiseKeys,
    Commitments,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    Message,
    Reveal,
    Roster,
    RosterEntry,
    ShareKeys,
    SharesRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocols.participant import ServerBase
from secagg.protocols.recovery import recover_secrets, strip_masks
from secagg.protocols.transitions import ServerStage, server_table_for
from secagg.shamir import PRIME, SHARE_BYTES

__all__ = ["RELAY_ALL_SIGNATURES_UP_TO", "SecAggServer"]

RELAY_ALL_SIGNATURES_UP_TO = 1024
"""Largest cohort whose unmask requests carry every consistency signature (64 kB each)."""

_PRIME_BYTES = PRIME.to_bytes(SHARE_BYTES, "big")  # a 33-byte share y is valid iff below it


class SecAggServer(ServerBase[RoundContext]):
    """The server of one SecAgg or SecAgg+ round."""

    def __init__(self, ctx: RoundContext) -> None:
        """Create the server for ``ctx``.

        Raises:
            TypeError: ``ctx`` is not a RoundContext.
            LocalProtocolError: the config is the plaintext baseline.
        """
        cfg = ctx.config
        super().__init__(ctx, server_table_for(cfg))
        if not cfg.is_masked:
            raise LocalProtocolError(f"SecAggServer cannot run {cfg.protocol.value!r}")
        self._adverts: dict[int, AdvertiseKeys] = {}
        self._keys_seen: set[bytes] = set()
        self._reveals: dict[int, bytes] = {}
        self._seed = b""
        self._graph_or_none: NeighbourGraph | None = None
        self._adj_or_none: Adjacency | None = None
        self._in_u1 = np.zeros(0, dtype=np.bool_)
        self._u1: frozenset[int] = frozenset()
        self._shared: dict[int, tuple[tuple[int, bytes], ...]] = {}  # sender -> ciphertexts
        self._u2: frozenset[int] = frozenset()
        self._acc: npt.NDArray[np.uint32] | None = None
        self._u3: tuple[int, ...] = ()
        self._sigs: dict[int, bytes] = {}
        self._requests: dict[int, UnmaskRequest] = {}
        self._seed_ys: dict[int, dict[int, bytes]] = {}  # holder -> {owner: share}
        self._key_ys: dict[int, dict[int, bytes]] = {}
        self._released: dict[int, dict[int, bytes]] = {}
        self.workers = 1
        """Threads that strip the masks (AES releases the GIL); the result is the same."""

    @property
    def released_noise(self) -> dict[int, dict[int, bytes]]:
        """``{client: {level: seed}}``: the removable noise components each survivor released
        (empty for clients without removable noise, or that did not answer)."""
        return {u: dict(v) for u, v in self._released.items()}

    @property
    def graph(self) -> NeighbourGraph:
        """The round's neighbour graph (fixed once every committer revealed its nonce).

        Raises:
            LocalProtocolError: the reveal stage has not closed yet.
        """
        if self._graph_or_none is None:
            raise LocalProtocolError("the graph is fixed when the reveal stage closes")
        return self._graph_or_none

    @property
    def graph_seed(self) -> bytes:
        """The graph seed from the revealed nonces (empty before the reveal stage closed)."""
        return self._seed

    @property
    def _graph(self) -> NeighbourGraph:
        return self.graph

    @property
    def _adj(self) -> Adjacency:
        assert self._adj_or_none is not None, "the graph is fixed when the reveal stage closes"
        return self._adj_or_none

    def _nbrs(self, u: int) -> frozenset[int]:
        return self._adj.neighbours(u)

    # -- receiving -------------------------------------------------------------------------

    def _accept(self, sender: int, msg: Message) -> None:
        if isinstance(msg, AdvertiseKeys):
            self._accept_advert(sender, msg)
        elif isinstance(msg, Reveal):
            if commitment(self._ctx, sender, msg.nonce) != self._adverts[sender].commitment:
                raise RemoteProtocolError("revealed nonce does not open the commitment")
            self._reveals[sender] = msg.nonce
        elif isinstance(msg, ShareKeys):
            # Recipients are strictly ascending (the message checks it), as is this list.
            if ([r for r, _ in msg.ciphertexts]
                    != self._adj.neighbours_in(sender, self._in_u1)):
                raise RemoteProtocolError("shares not addressed to exactly the neighbours")
            self._shared[sender] = msg.ciphertexts
        elif isinstance(msg, MaskedInput):
            self._accept_masked(msg)
        elif isinstance(msg, ConsistencySignature):
            try:
                self._ctx.verify_key(sender).verify(
                    msg.signature, labels.consistency_payload(self._ctx, self._u3, self._seed))
            except InvalidSignature:
                raise RemoteProtocolError("consistency signature invalid") from None
            self._sigs[sender] = msg.signature
        elif isinstance(msg, UnmaskResponse):
            self._accept_unmask(sender, msg)

    def _accept_advert(self, sender: int, msg: AdvertiseKeys) -> None:
        if msg.c_public == msg.s_public or {msg.c_public, msg.s_public} & self._keys_seen:
            raise RemoteProtocolError("public key reused")
        if self._ctx.config.active:
            payload = labels.advert_payload(self._ctx, sender, msg.c_public, msg.s_public,
                                            msg.commitment)
            try:
                self._ctx.verify_key(sender).verify(msg.signature, payload)
            except InvalidSignature:
                raise RemoteProtocolError("advertised keys not signed by the client") from None
        self._keys_seen |= {msg.c_public, msg.s_public}
        self._adverts[sender] = msg

    def _accept_masked(self, msg: MaskedInput) -> None:
        ctx = self._ctx
        if msg.count != ctx.vector_length or msg.bits != ctx.config.bits:
            raise RemoteProtocolError(
                f"masked input must be {ctx.vector_length} values of {ctx.config.bits} bits")
        if self._acc is None:
            self._acc = np.zeros(ctx.vector_length, dtype=np.uint32)
        self._mark("unpack")
        try:
            # Fused, chunked unpack-and-add; on error the sum is left untouched.
            unpack_add_into(self._acc, msg.data, msg.bits, msg.count)
        except ValueError as exc:
            raise RemoteProtocolError(f"masked input does not unpack: {exc}") from None

    def _accept_unmask(self, sender: int, msg: UnmaskResponse) -> None:
        req = self._requests[sender]
        if (tuple(u for u, _ in msg.seed_shares) != req.survivors
                or tuple(u for u, _ in msg.key_shares) != req.dropped):
            raise RemoteProtocolError("unmask response does not answer the request")
        # Every share is 33 bytes (the message checked it): big-endian, so it encodes a field
        # element exactly when it sorts below p's encoding. The ints are parsed when used.
        if any(b >= _PRIME_BYTES for _, b in msg.seed_shares) or any(
                b >= _PRIME_BYTES for _, b in msg.key_shares):
            raise RemoteProtocolError("malformed share")
        if msg.noise_seeds:
            n, t = len(self._ctx.client_ids), self._ctx.config.threshold
            want = tuple(j for j in removable_levels(n, t) if j > n - len(self._u3))
            if tuple(j for j, _ in msg.noise_seeds) != want:
                raise RemoteProtocolError(f"released noise levels must be {list(want)}")
        self._seed_ys[sender] = dict(msg.seed_shares)
        if msg.key_shares:
            self._key_ys[sender] = dict(msg.key_shares)
        if msg.noise_seeds:
            self._released[sender] = dict(msg.noise_seeds)

    # -- closing stages --------------------------------------------------------------------

    def _close(self, stage: ServerStage, received: frozenset[int]) -> dict[int, Message]:
        t = self._ctx.config.threshold
        if len(received) < t:
            raise ThresholdError(f"only {len(received)} clients completed {stage.value}, "
                                 f"need {t}")
        if stage is ServerStage.ADVERTISE:
            return self._close_advertise(received)
        if stage is ServerStage.REVEAL:
            return self._close_reveal(received)
        if stage is ServerStage.SHARE:
            return self._close_share(received)
        if stage is ServerStage.MASKED_INPUT:
            return self._close_masked(received)
        if stage is ServerStage.CONSISTENCY:
            return self._unmask_requests(received)
        return self._finish(received)

    def _close_advertise(self, u1: frozenset[int]) -> dict[int, Message]:
        """Fix ``U1`` and send each of its clients the one list of their commitments."""
        self._adverts = {u: self._adverts[u] for u in sorted(u1)}
        self._u1 = u1
        coms = Commitments(self._ctx.round_id,
                           tuple((u, a.commitment) for u, a in self._adverts.items()))
        return dict.fromkeys(sorted(u1), coms)

    def _close_reveal(self, revealed: frozenset[int]) -> dict[int, Message]:
        """Every committer revealed: fix the graph seed, then send each client the reveals
        and the keys of its advertised neighbours; a client with fewer than ``t - 1`` of them
        could never have its secrets rebuilt, so it is left out (it then counts as dropped
        before sharing).

        Raises:
            ThresholdError: a committer did not reveal (``party`` names one): dropping it
                would let the server choose the seed among subsets, so the round aborts.
        """
        u1 = self._u1
        if revealed != u1:
            missing = sorted(u1 - revealed)
            raise ThresholdError(f"{len(missing)} committed clients did not reveal their graph "
                                 "nonce; the round aborts", party=missing[0])
        reveals = tuple(sorted(self._reveals.items()))
        self._seed = graph_seed(self._ctx, reveals)
        self._graph_or_none = round_graph(self._ctx, self._seed)
        self._adj_or_none = Adjacency(self._graph_or_none)
        entries = {u: RosterEntry(u, a.c_public, a.s_public, a.signature)
                   for u, a in self._adverts.items()}
        t, rid = self._ctx.config.threshold, self._ctx.round_id
        in_u1 = self._adj.mask(u1)
        out: dict[int, Message] = {}
        for v in sorted(u1):
            holders = self._adj.neighbours_in(v, in_u1)
            if len(holders) + 1 >= t:
                bisect.insort(holders, v)
                out[v] = Roster(rid, tuple(entries[w] for w in holders), reveals)
        self._in_u1 = in_u1
        return out

    def _close_share(self, u2: frozenset[int]) -> dict[int, Message]:
        # Each sender addressed exactly its advertised neighbours (checked on receipt), so
        # what is relayed to v is one ciphertext from each neighbour of v that shared keys.
        t = self._ctx.config.threshold
        relays: dict[int, list[tuple[int, bytes]]] = {v: [] for v in sorted(u2)}
        for u in sorted(u2):  # ascending senders: every relay comes out sorted
            for v, ct in self._shared[u]:
                got = relays.get(v)
                if got is not None:
                    got.append((u, ct))
        for v, got in relays.items():
            if len(got) + 1 < t:
                raise ThresholdError("too few neighbours shared keys", party=v)
        self._u2 = u2
        rid = self._ctx.round_id
        out: dict[int, Message] = {v: SharesRelay(rid, tuple(got)) for v, got in relays.items()}
        self._shared.clear()
        return out

    def _close_masked(self, u3: frozenset[int]) -> dict[int, Message]:
        """Check that every client that shared keys keeps ``t`` living holders, then ask
        (active mode: first the consistency signatures)."""
        t, u2, rid = self._ctx.config.threshold, self._u2, self._ctx.round_id
        in_u3 = self._adj.mask(u3)
        # Holders of u's shares still alive: u itself if it survived, and every surviving
        # neighbour (they hold u's shares: the graph is symmetric).
        alive = self._adj.counts(in_u3) + in_u3
        for u in sorted(u2):
            if alive[self._adj.row(u)] < t:
                raise ThresholdError("too few holders of this client's shares survived", party=u)
        self._u3 = tuple(sorted(u3))
        if self._ctx.config.active:
            return {v: ConsistencyRequest(rid, self._u3) for v in self._u3}
        return self._unmask_requests(u3)

    def _unmask_requests(self, recipients: frozenset[int]) -> dict[int, Message]:
        """One request per recipient; in active mode it carries the signatures of the
        closed neighbourhoods of the clients whose shares the recipient holds.

        Raises:
            ThresholdError: (active) some client that shared keys has fewer than ``t``
                signers in its closed neighbourhood: every holder of its shares would refuse,
                and its secret could not be rebuilt anyway.
        """
        u3 = frozenset(self._u3)
        active = self._ctx.config.active
        if active:
            t, signers = self._ctx.config.threshold, frozenset(self._sigs)
            for u in sorted(self._u2):
                if len((self._nbrs(u) | {u}) & signers) < t:
                    raise ThresholdError("too few neighbours signed the survivor set", party=u)
        rid = self._ctx.round_id
        everyone = len(self._ctx.client_ids) <= RELAY_ALL_SIGNATURES_UP_TO
        in_u2 = self._adj.mask(self._u2)
        for v in sorted(recipients):
            held = self._adj.neighbours_in(v, in_u2)  # whose shares v holds
            survivors = [u for u in held if u in u3]
            bisect.insort(survivors, v)
            sigs: tuple[tuple[int, bytes], ...] = ()
            if active:
                near = set().union(*(self._nbrs(u) | {u} for u in (*held, v)))
                sigs = tuple(sorted((w, g) for w, g in self._sigs.items()
                                    if everyone or w in near))
            self._requests[v] = UnmaskRequest(
                rid, tuple(survivors), tuple(u for u in held if u not in u3), sigs,
                survivor_count=len(u3))
        return dict(self._requests)

    def _finish(self, u5: frozenset[int]) -> dict[int, Message]:
        assert self._acc is not None
        self._unmask_into(self._acc)
        self._mark("aggregate")
        self._result = decode_aggregate(self._ctx, self._acc, self._u3)
        self._wipe()
        return {}

    def _unmask_into(self, acc: npt.NDArray[np.uint32]) -> None:
        """Rebuild the secrets from the unmask answers and strip the masks off ``acc``.

        Raises:
            ThresholdError: fewer than ``t`` shares of some secret.
            RemoteProtocolError: inconsistent shares, or a key that was not advertised.
        """
        self._mark("reconstruct")
        t = self._ctx.config.threshold
        u3 = frozenset(self._u3)
        dropped = sorted(self._u2 - u3)
        # Who answered with a share of whose secret: every holder that answered was asked
        # for exactly the shares it holds (checked on receipt), so these are that holder's
        # neighbours (and itself, for its own seed) among the clients that answered.
        in_u5 = self._adj.mask(self._seed_ys)
        holders: dict[int, list[int]] = {}
        for u in self._u3:
            holders[u] = self._adj.neighbours_in(u, in_u5)
            if u in self._seed_ys:
                bisect.insort(holders[u], u)
        for u in dropped:
            holders[u] = self._adj.neighbours_in(u, in_u5)
        answers = {h: self._seed_ys[h] | self._key_ys.get(h, {}) for h in self._seed_ys}
        secrets = recover_secrets(holders, answers, self._secret_order(), t)
        seeds = {u: secrets[u] for u in self._u3}
        keys = {u: secrets[u] for u in dropped}
        public = {u: a.s_public for u, a in self._adverts.items()}
        self.mask_words += strip_masks(self._ctx, acc, seeds=seeds, mask_keys=keys,
                                       public_keys=public, neighbours=self._nbrs,
                                       workers=self.workers, trace=self._mark)

    def _secret_order(self) -> list[int]:
        """The clients in the graph's ring order (ids if there is none): neighbours in it
        share most holders, so runs of secrets share one Lagrange precomputation."""
        g = self._graph
        if g.degree >= len(g.members) - 1:
            return list(g.members)
        return ring_order(g.members, self._nbrs, g.degree) or list(g.members)

    def _mark(self, phase: str | None) -> None:
        if self.trace is not None:
            self.trace(phase)

    def _wipe(self) -> None:
        self._seed_ys.clear()
        self._key_ys.clear()
        self._shared.clear()

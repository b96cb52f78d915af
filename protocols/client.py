"""A SecAgg / SecAgg+ client (Bonawitz et al. CCS'17 with double masking; Bell et al. CCS'20).

Steps (``ClientStage`` says what the client waits for next):

1. ``start(x)``: fresh X25519 key pairs ``c`` (share encryption) and ``s`` (masking), a
   32-byte self-mask seed ``b`` and a 32-byte graph nonce; advertise ``c_pk, s_pk`` and the
   nonce's commitment (signed in active mode).
2. Commitments: the server's list of every advertiser's commitment (it must hold this
   client's own, unchanged); answer with the nonce.
3. Roster: check every committer's revealed nonce against its commitment (all of them must be
   there), derive the graph seed and so the neighbours (:mod:`secagg.protocols.graph`: the
   server cannot grind a graph that contains this client's fresh nonce); Shamir-share ``b``
   and ``s_sk`` (t of the neighbours and itself) and AEAD-encrypt each neighbour's pair of
   shares under the pairwise ``c`` key, bound to round, graph seed, sender and recipient.
4. Relayed shares: decrypt and keep them; the senders are the neighbours *fixed at share
   time*. Send ``y = encode(x) + PRG(b) + sum_v +-PRG(s_uv) mod 2^bits``, bit-packed.
5. Active mode: sign the survivor set the server announces (and the graph seed).
6. Unmask request: check it (below), answer once with seed shares of survivors and key shares
   of the dropped, wipe everything.

Removable noise ("add, then remove"; :meth:`SecAggClient.hold_removable`): the application
may add noise components ``1..n-t`` to its input, each expanded from a seed it hands the
client. Component ``j`` is excess once at least ``n - j + 1`` inputs are in the sum, and the
client releases its OWN seeds of the excess components in its unmask answer, so that the
survivors' noise is exactly what was asked for whatever the dropouts. It releases only on a
survivor count it can trust: in passive mode the server's (honest by assumption); in active
mode the size of the set it signed, and only when that set carries a quorum of valid
signatures over the whole cohort (:func:`release_quorum`), so that no other survivor set can
have gathered the ``t`` signatures any share reveal needs (docs/threat-model.md).

The client enforces the invariants itself: survivors and dropped are disjoint, cover exactly
the neighbours fixed at share time (survivors also include the client), at least ``t``
survivors, one answer per round, right round and stage; in active mode also that the request
matches the set it signed and that this set carries ``t`` valid signatures from the closed
neighbourhood of every client whose share it reveals (:meth:`_check_signatures`: one set per
neighbourhood, whatever views the server keeps). Any violation aborts the client before it
reveals.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg import kex, rng, shamir
from secagg.aead import Aead
from secagg.errors import InvalidCiphertext, InvalidKeyError, InvalidSignature
from secagg.packing import pack
from secagg.prg import SEED_BYTES, MaskPRG, add_masks_into
from secagg.protocols import labels
from secagg.protocols.client_secrets import ClientSecrets
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import check_input, encode_input
from secagg.protocols.errors import LocalProtocolError, RemoteProtocolError, ThresholdError
from secagg.protocols.graph import NeighbourGraph, round_graph
from secagg.protocols.graph_nonce import GraphNonce
from secagg.protocols.messages import (
    NOISE_SEED_BYTES,
    AdvertiseKeys,
    Commitments,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    Message,
    Roster,
    ShareKeys,
    SharesRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocols.participant import ClientBase
from secagg.protocols.release import release_quorum, removable_levels
from secagg.protocols.transitions import ClientStage, client_table_for
from secagg.sign import SigningKey

__all__ = ["SecAggClient", "release_quorum", "removable_levels"]


class SecAggClient(ClientBase[RoundContext]):
    """One client of a SecAgg or SecAgg+ round."""

    def __init__(
        self, ctx: RoundContext, client_id: int, *, identity: SigningKey | None = None
    ) -> None:
        """Create the client; ``identity`` is its Ed25519 key (required in active mode).

        Raises:
            TypeError: ``ctx`` is not a RoundContext.
            LocalProtocolError: not a client of the round, plaintext config, or the identity
                is missing or does not match the verify key in ``ctx``.
        """
        cfg = ctx.config
        super().__init__(ctx, client_id, client_table_for(cfg))
        if not cfg.is_masked:
            raise LocalProtocolError(f"SecAggClient cannot run {cfg.protocol.value!r}")
        if cfg.active and (
            not isinstance(identity, SigningKey)
            or identity.verify_key != ctx.verify_key(client_id)
        ):
            raise LocalProtocolError("active mode needs the client's registered signing key")
        self._identity = identity if cfg.active else None
        self._s = ClientSecrets()
        self._nonce: GraphNonce | None = None  # drawn at start, with the other secrets
        self._seed = b""
        self._graph: NeighbourGraph | None = None
        self._neighbours: frozenset[int] = frozenset()
        self._advertised: frozenset[int] = frozenset()
        self._committed: frozenset[int] = frozenset()
        self._signed: tuple[int, ...] | None = None

    @property
    def neighbours(self) -> frozenset[int]:
        """Neighbours in the round's graph (empty until the roster fixed the graph seed)."""
        return self._neighbours

    @property
    def graph_seed(self) -> bytes:
        """The graph seed this client derived from the revealed nonces (empty before)."""
        return self._seed

    @property
    def advertised(self) -> frozenset[int]:
        """The neighbours the roster announced; this client shares with exactly these."""
        return self._advertised

    @property
    def committed(self) -> frozenset[int]:
        """The neighbours whose shares this client holds (fixed at share time)."""
        return self._committed

    def hold_removable(self, seeds: dict[int, bytes]) -> None:
        """Hold the seeds of this client's removable noise components, ``{level: seed}`` for
        every level of :func:`removable_levels` (``n`` = the cohort size). Call before
        :meth:`start`; the application has already added the noise they expand to.

        Raises:
            LocalProtocolError: called after the round started, levels not exactly
                ``1..n-t``, or a seed that is not 32 bytes.
        """
        if self.stage is not ClientStage.NEW:
            raise LocalProtocolError("hold_removable must come before start")
        ctx = self._ctx
        want = removable_levels(len(ctx.client_ids), ctx.config.threshold)
        if not isinstance(seeds, dict) or tuple(sorted(seeds)) != want:
            raise LocalProtocolError(f"removable noise needs seeds for levels {list(want)}")
        if not all(isinstance(v, bytes) and len(v) == NOISE_SEED_BYTES for v in seeds.values()):
            raise LocalProtocolError(f"noise seeds must be {NOISE_SEED_BYTES} bytes")
        self._s.removable = dict(seeds)

    def _wipe(self) -> None:
        self._s.wipe()
        if self._nonce is not None:
            self._nonce.wipe()

    def _dispatch(self, msg: Message) -> list[Message]:
        self._check_round(msg)
        if isinstance(msg, Commitments):
            return self._on_commitments(msg)
        if isinstance(msg, Roster):
            return self._on_roster(msg)
        if isinstance(msg, SharesRelay):
            return self._on_relay(msg)
        if isinstance(msg, ConsistencyRequest):
            return self._on_consistency(msg)
        if isinstance(msg, UnmaskRequest):
            return self._on_unmask(msg)
        raise RemoteProtocolError(f"unexpected {msg.TYPE.name}")  # pragma: no cover (table)

    def _on_start(self, x: Any, weight: float | None) -> list[Message]:
        s = self._s
        s.input = check_input(self._ctx, x, weight)
        s.c_key, s.s_key = kex.KeyPair.generate(), kex.KeyPair.generate()
        s.seed = bytearray(rng.random_bytes(SEED_BYTES))
        c_pk, s_pk = s.c_key.public_bytes(), s.s_key.public_bytes()
        self._nonce = GraphNonce(self._ctx, self._id)
        com = self._nonce.commitment
        sig = b""
        if self._identity is not None:
            sig = self._identity.sign(labels.advert_payload(self._ctx, self._id, c_pk, s_pk,
                                                            com))
        return [AdvertiseKeys(self._ctx.round_id, self._id, c_pk, s_pk, com, sig)]

    def _on_commitments(self, msg: Commitments) -> list[Message]:
        assert self._nonce is not None  # the table allows this only after start
        return [self._nonce.reveal(msg)]

    def _derive_graph(self, msg: Roster) -> None:
        """Fix seed and graph from the reveals (:meth:`GraphNonce.seed` checks them all)."""
        ctx = self._ctx
        assert self._nonce is not None
        self._seed = self._nonce.seed(msg.reveals)
        self._graph = round_graph(ctx, self._seed)
        self._neighbours = self._graph.neighbours(self._id)

    def _check_roster(self, msg: Roster) -> dict[int, tuple[bytes, bytes]]:
        """The neighbours' ``(c_pk, s_pk)`` if the roster is acceptable.

        Raises:
            RemoteProtocolError, ThresholdError: it is not.
        """
        self._derive_graph(msg)
        ctx, me, s = self._ctx, self._id, self._s
        entries = {e.client_id: e for e in msg.entries}
        if me not in entries or not set(entries) <= self._neighbours | {me}:
            raise RemoteProtocolError("roster names non-neighbours, or omits me")
        if len(entries) < ctx.config.threshold:
            raise ThresholdError(f"only {len(entries) - 1} neighbours advertised")
        assert s.c_key is not None and s.s_key is not None and self._nonce is not None
        nonce = self._nonce
        mine = entries[me]
        if (mine.c_public, mine.s_public) != (s.c_key.public_bytes(), s.s_key.public_bytes()):
            raise RemoteProtocolError("roster altered my public keys")
        keys = [k for e in msg.entries for k in (e.c_public, e.s_public)]
        if len(set(keys)) != len(keys):
            raise RemoteProtocolError("roster public keys are not all distinct")
        if self._identity is not None:
            for e in msg.entries:
                try:
                    ctx.verify_key(e.client_id).verify(
                        e.signature, labels.advert_payload(
                            ctx, e.client_id, e.c_public, e.s_public,
                            nonce.commitment_of(e.client_id)))
                except InvalidSignature:
                    raise RemoteProtocolError("bad key signature", party=e.client_id) from None
        return {v: (e.c_public, e.s_public) for v, e in entries.items() if v != me}

    def _agree_all(self, peers: dict[int, tuple[bytes, bytes]]) -> None:
        """Derive the pairwise share-encryption keys and mask seeds of every neighbour."""
        ctx, me, s = self._ctx, self._id, self._s
        assert s.c_key is not None and s.s_key is not None
        salt = labels.kex_salt(ctx)
        for v, (c_pk, s_pk) in peers.items():
            try:
                s.share_keys[v] = kex.agree(
                    s.c_key, c_pk, salt=salt,
                    info=labels.kex_info(ctx, labels.PURPOSE_SHARE_KEY, me, v))
                s.mask_seeds[v] = kex.agree(
                    s.s_key, s_pk, salt=salt,
                    info=labels.kex_info(ctx, labels.PURPOSE_MASK_SEED, me, v))
            except InvalidKeyError:
                raise RemoteProtocolError("degenerate public key", party=v) from None

    def _on_roster(self, msg: Roster) -> list[Message]:
        peers = self._check_roster(msg)
        self._agree_all(peers)
        self._advertised = frozenset(peers)  # the public keys are not needed any more
        ctx, me, s = self._ctx, self._id, self._s
        assert s.s_key is not None
        holders = sorted(self._advertised | {me})
        xs = [h + 1 for h in holders]
        t = ctx.config.threshold
        b_shares = shamir.split(bytes(s.seed), threshold=t, xs=xs)
        k_shares = shamir.split(s.s_key.private_bytes(), threshold=t, xs=xs)
        cts = []
        for h, b_sh, k_sh in zip(holders, b_shares, k_shares, strict=True):
            if h == me:
                s.own = (b_sh.to_bytes(), k_sh.to_bytes())
                continue
            plaintext = struct.pack(">II", me, h) + b_sh.to_bytes() + k_sh.to_bytes()
            ad = labels.share_associated_data(ctx, me, h, self._seed)
            cts.append((h, Aead(s.share_keys[h]).encrypt(plaintext, ad)))
        return [ShareKeys(ctx.round_id, me, tuple(cts))]

    def _on_relay(self, msg: SharesRelay) -> list[Message]:
        ctx, me, s = self._ctx, self._id, self._s
        senders = [u for u, _ in msg.ciphertexts]
        for u in senders:
            if u not in self._advertised:
                raise RemoteProtocolError("shares relayed from a non-neighbour", party=u)
        if len(senders) + 1 < ctx.config.threshold:
            raise ThresholdError(f"only {len(senders)} neighbours shared their keys")
        n = shamir.SHARE_BYTES
        for u, ct in msg.ciphertexts:
            try:
                pt = Aead(s.share_keys[u]).decrypt(
                    ct, labels.share_associated_data(ctx, u, me, self._seed))
            except InvalidCiphertext:
                raise RemoteProtocolError("share ciphertext does not open", party=u) from None
            b_raw, k_raw = pt[8 : 8 + n], pt[8 + n :]
            try:
                shamir.Share.from_bytes(me + 1, b_raw)
                shamir.Share.from_bytes(me + 1, k_raw)
            except ValueError:
                raise RemoteProtocolError("malformed share", party=u) from None
            if struct.unpack(">II", pt[:8]) != (u, me):
                raise RemoteProtocolError("share addressed to another pair", party=u)
            s.held[u] = (b_raw, k_raw)
        self._committed = frozenset(senders)
        s.share_keys.clear()  # the share keys have done their job
        return [self._masked_input()]

    def _masked_input(self) -> Message:
        """The upload: the masked ring vector, bit-packed."""
        ring = self._masked_ring()
        bits = self._ctx.config.bits
        return MaskedInput(self._ctx.round_id, self._id, len(ring), bits, pack(ring, bits))

    def _masked_ring(self) -> npt.NDArray[np.uint32]:
        """``encode(x) + PRG(b) + sum_v +-PRG(s_uv) mod 2^bits``; drops the input and seeds."""
        ctx, me, s = self._ctx, self._id, self._s
        assert s.input is not None
        ring = encode_input(ctx, *s.input)
        s.input = None
        masks = [(MaskPRG(bytes(s.seed), label=labels.self_mask_label(ctx, me)), False)]
        masks += [(MaskPRG(s.mask_seeds[v], label=labels.pair_mask_label(ctx, me, v)), me > v)
                  for v in sorted(self._committed)]
        # One pass over the vector: each chunk stays in cache while all k + 1 masks go in.
        add_masks_into(ring, masks, bits=ctx.config.bits)
        self.mask_words += len(masks) * len(ring)
        s.mask_seeds.clear()
        return ring

    def _on_consistency(self, msg: ConsistencyRequest) -> list[Message]:
        ctx, me = self._ctx, self._id
        survivors = msg.survivors
        if me not in survivors or not all(ctx.is_client(u) for u in survivors):
            raise RemoteProtocolError("survivor set omits me or names non-clients")
        if len(survivors) < ctx.config.threshold:
            raise ThresholdError(f"only {len(survivors)} survivors announced")
        assert self._identity is not None
        self._signed = survivors
        sig = self._identity.sign(labels.consistency_payload(ctx, survivors, self._seed))
        return [ConsistencySignature(ctx.round_id, me, sig)]

    def _check_unmask(self, msg: UnmaskRequest) -> frozenset[int]:
        """Raises RemoteProtocolError / ThresholdError unless the request is safe to answer;
        returns the signers whose consistency signatures were verified (active mode)."""
        me, t = self._id, self._ctx.config.threshold
        alive, dropped = set(msg.survivors), set(msg.dropped)
        if alive & dropped:
            raise RemoteProtocolError("a client is both survivor and dropped", party=None)
        if me not in alive:
            raise RemoteProtocolError("unmask request treats me as dropped")
        if alive | dropped != self._committed | {me}:
            raise RemoteProtocolError("unmask request does not cover exactly my neighbours")
        if len(alive) < t:
            raise ThresholdError(f"only {len(alive)} survivors among my neighbours, need {t}")
        if self._signed is not None:
            return self._check_signatures(msg, alive, dropped)
        return frozenset()

    def _check_signatures(self, msg: UnmaskRequest, alive: set[int], dropped: set[int]
                          ) -> frozenset[int]:
        """Active mode: the request matches the set this client signed, and that set carries
        ``t`` valid signatures from the closed neighbourhood ``N[u]`` of every ``u`` whose
        share it would reveal (itself and each committed neighbour).

        Counting per owner, in ``u``'s own ``k + 1``-neighbourhood, is what makes the check
        hold under split views: each honest client signs one set, so with ``2t > k + 1 + C_u``
        at most one set can gather ``t`` signatures from ``N[u]``, and every share of ``u``
        any honest client reveals is revealed under that one set (docs/threat-model.md).
        ``t`` signatures from anywhere in the cohort would let disjoint views each reach ``t``.

        Raises:
            RemoteProtocolError: the request contradicts the signed set; a signature is from
                a non-survivor or does not verify (``party`` = its signer); or some ``N[u]``
                gave fewer than ``t`` signatures (an honest server never asks then).
        """
        ctx, me, signed = self._ctx, self._id, set(self._signed or ())
        if alive != signed & (self._committed | {me}) or dropped != self._committed - signed:
            raise RemoteProtocolError("unmask request contradicts the signed survivor set")
        graph, t = self._graph, ctx.config.threshold
        assert graph is not None  # fixed at the roster, before any share was made
        owners = sorted(self._committed | {me})
        closed = {u: graph.neighbours(u) | {u} for u in owners}
        relevant = set().union(*closed.values())
        payload = labels.consistency_payload(ctx, self._signed or (), self._seed)
        valid: set[int] = set()
        for v, sig in msg.signatures:
            if v not in signed:
                raise RemoteProtocolError("signature from a non-survivor", party=v)
            if v not in relevant:
                continue  # says nothing about the owners of the shares this client holds
            try:
                ctx.verify_key(v).verify(sig, payload)
            except InvalidSignature:
                raise RemoteProtocolError("consistency signature invalid", party=v) from None
            valid.add(v)
        for u in owners:
            have = len(valid & closed[u])
            if have < t:  # an honest server checks this before it asks (server.py)
                raise RemoteProtocolError(
                    f"signed survivor set has only {have} consistency signatures from the "
                    f"neighbourhood of client {u}, need {t} (split views?)")
        return frozenset(valid)

    def _released(self, msg: UnmaskRequest, verified: frozenset[int]
                  ) -> tuple[tuple[int, bytes], ...]:
        """The removable noise seeds the survivor count makes excess, once it is trusted.

        Raises:
            RemoteProtocolError: the count contradicts the request or the signed set.
        """
        if not self._s.removable:
            return ()
        ctx, count = self._ctx, msg.survivor_count
        n, t = len(ctx.client_ids), ctx.config.threshold
        if not max(t, len(msg.survivors)) <= count <= n:
            raise RemoteProtocolError(f"survivor count {count} is impossible here")
        if ctx.config.k == n - 1 and count != len(msg.survivors):
            raise RemoteProtocolError("survivor count differs from the survivors I hold")
        if self._signed is not None:
            if count != len(self._signed):
                raise RemoteProtocolError("survivor count differs from the set I signed")
            corrupt = ctx.config.corrupt
            if self._quorum_signers(msg, verified) < release_quorum(n, t, corrupt):
                return ()  # keep the excess noise: more noise is always safe
        return tuple((j, self._s.removable[j]) for j in sorted(self._s.removable)
                     if j > n - count)

    def _quorum_signers(self, msg: UnmaskRequest, verified: frozenset[int]) -> int:
        """Valid signatures on the signed set, from anyone in the cohort: those
        :meth:`_check_signatures` verified, plus the others, verified here once."""
        ctx = self._ctx
        payload = labels.consistency_payload(ctx, self._signed or (), self._seed)
        valid = len(verified)
        for v, sig in msg.signatures:
            if v in verified:
                continue  # non-signers of the set were refused by _check_signatures
            try:
                ctx.verify_key(v).verify(sig, payload)
            except InvalidSignature:
                continue
            valid += 1
        return valid

    def _on_unmask(self, msg: UnmaskRequest) -> list[Message]:
        released = self._released(msg, self._check_unmask(msg))
        me, s = self._id, self._s
        seed_shares = tuple((u, s.own[0] if u == me else s.held[u][0]) for u in msg.survivors)
        key_shares = tuple((u, s.held[u][1]) for u in msg.dropped)
        return [UnmaskResponse(self._ctx.round_id, me, seed_shares, key_shares, released)]

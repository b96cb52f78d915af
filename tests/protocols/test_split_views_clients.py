"""The split-view attack run against real :class:`SecAggClient` objects (SecAgg+, active mode,
n = 20 at the default parameters, k = 8, t = 6).

:class:`SplitViewServer` is the malicious server as code: it takes a plan found by the exact
search of :mod:`tests.protocols.test_split_views` on the round's real graph (under the old
rule, where plans exist), relays shares so that the target commits to the plan's neighbours,
keeps one signed survivor set per view, asks each client of the plan to unmask, rebuilds the
target's self-mask seed and its committed neighbours' mask keys from the answers, and strips
every mask off the target's upload with the protocol's own :func:`strip_masks`.

Under the old client rule (``t`` signatures from anywhere in the cohort, patched in here only)
it reads the target's exact input, with no colluding client: the control that shows the code
attacks. Under the shipped rule every client it asks refuses before revealing anything, with a
:class:`RemoteProtocolError` that names the neighbourhood short of signatures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from secagg.errors import InvalidSignature
from secagg.packing import unpack
from secagg.protocols import (
    ClientStage,
    ProtocolError,
    RemoteProtocolError,
    SecAggClient,
    SecAggConfig,
    ThresholdError,
    labels,
)
from secagg.protocols.encoding import check_input, encode_input
from secagg.protocols.graph import graph_seed, round_graph
from secagg.protocols.messages import (
    AdvertiseKeys,
    Commitments,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    Roster,
    RosterEntry,
    ShareKeys,
    SharesRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocols.recovery import strip_masks
from secagg.protocols.unmasking import SecretRecovery
from secagg.shamir import Share
from tests.protocols.helpers import Driver, roundtrip
from tests.protocols.test_split_views import Plan, search


class SplitViewServer:
    """A malicious server running a split-view plan against the clients of ``d``."""

    def __init__(self, d: Driver) -> None:
        self.d = d
        self.plan: Plan | None = None
        self.ctx = d.ctx
        self.clients = {i: c for i, c in d.clients.items() if isinstance(c, SecAggClient)}
        self.errors: dict[int, ProtocolError] = {}
        self.adverts: dict[int, AdvertiseKeys] = {}
        self.masked: dict[int, MaskedInput] = {}
        self.answers: dict[int, UnmaskResponse] = {}
        self.reveals: list[tuple[int, bytes]] = []

    def _send(self, cid: int, msg: Any) -> list[Any]:
        try:
            return self.clients[cid].receive(roundtrip(msg))
        except ProtocolError as exc:
            self.errors[cid] = exc
            return []

    def commit_reveal(self) -> bytes:
        """Start every client and run the honest commit-reveal exchange: the server learns the
        round's graph seed only now, after every nonce is in (it then plans on that graph)."""
        rid = self.ctx.round_id
        for cid, c in self.clients.items():
            (adv,) = c.start(self.d.xs[cid])
            self.adverts[cid] = adv  # type: ignore[assignment]
        coms = Commitments(rid, tuple((u, a.commitment) for u, a in sorted(self.adverts.items())))
        for cid in self.ctx.client_ids:
            (rev,) = self._send(cid, coms)
            self.reveals.append((cid, rev.nonce))
        return graph_seed(self.ctx, self.reveals)

    def run(self) -> None:
        ctx, plan, rid = self.ctx, self.plan, self.ctx.round_id
        assert plan is not None
        graph = round_graph(ctx, graph_seed(ctx, self.reveals))
        nb = {u: graph.neighbours(u) for u in ctx.client_ids}
        cts: dict[tuple[int, int], bytes] = {}  # (sender, recipient) -> share ciphertext
        for cid in ctx.client_ids:  # genuine, signed rosters: every neighbour
            entries = tuple(RosterEntry(u, a.c_public, a.s_public, a.signature)
                            for u, a in sorted(self.adverts.items()) if u in nb[cid] | {cid})
            for msg in self._send(cid, Roster(rid, entries, tuple(self.reveals))):
                assert isinstance(msg, ShareKeys)
                cts.update({(cid, r): ct for r, ct in msg.ciphertexts})
        for cid in ctx.client_ids:  # relays: the plan's for whoever answers, all for the rest
            asked = cid in plan.answers or cid == plan.target
            senders = plan.holds[cid] if asked else nb[cid]
            relay = SharesRelay(rid, tuple((u, cts[u, cid]) for u in sorted(senders)))
            for msg in self._send(cid, relay):
                assert isinstance(msg, MaskedInput)
                self.masked[cid] = msg
        sigs: list[dict[int, bytes]] = [{} for _ in plan.survivors]
        for j, (survivors, signers) in enumerate(zip(plan.survivors, plan.signers,
                                                     strict=True)):
            for cid in sorted(signers):  # one survivor set per view, signed by its clients
                for msg in self._send(cid, ConsistencyRequest(rid, tuple(sorted(survivors)))):
                    assert isinstance(msg, ConsistencySignature)
                    sigs[j][cid] = msg.signature
        for cid, j in sorted(plan.answers.items()):
            held = self.clients[cid].committed
            alive = sorted((held & plan.survivors[j]) | {cid})
            dropped = sorted(held - plan.survivors[j])
            req = UnmaskRequest(rid, tuple(alive), tuple(dropped), tuple(sorted(sigs[j].items())))
            for msg in self._send(cid, req):
                assert isinstance(msg, UnmaskResponse)
                self.answers[cid] = msg

    def read_target(self) -> np.ndarray:
        """Unmask the target's upload alone from the answers.

        Raises:
            ThresholdError: too few shares of its seed or of a mask key it needs.
        """
        assert self.plan is not None
        ctx, target, t = self.ctx, self.plan.target, self.ctx.config.threshold
        seed_ys: dict[int, dict[int, int]] = {}
        key_ys: dict[int, dict[int, int]] = {}
        for holder, ans in self.answers.items():
            for u, b in ans.seed_shares:
                seed_ys.setdefault(u, {})[holder] = Share.from_bytes(holder + 1, b).y
            for u, b in ans.key_shares:
                key_ys.setdefault(u, {})[holder] = Share.from_bytes(holder + 1, b).y
        rec = SecretRecovery(t)
        seed = rec.recover(target, seed_ys.get(target, {}))
        partners = self.clients[target].committed
        keys = {v: rec.recover(v, key_ys.get(v, {})) for v in sorted(partners)}
        up = self.masked[target]
        acc = unpack(up.data, up.bits, up.count)
        public = {u: a.s_public for u, a in self.adverts.items()}
        strip_masks(ctx, acc, seeds={target: seed}, mask_keys=keys, public_keys=public,
                     neighbours=lambda u: frozenset({target}))
        return acc


def _old_rule(self: SecAggClient, msg: UnmaskRequest, alive: set[int],
              dropped: set[int]) -> None:
    """The check this library shipped before: ``t`` valid signatures from anywhere."""
    ctx, signed = self._ctx, set(self._signed or ())
    if alive != signed & (self._committed | {self._id}) or dropped != self._committed - signed:
        raise RemoteProtocolError("unmask request contradicts the signed survivor set")
    if len(msg.signatures) < ctx.config.threshold:
        raise ThresholdError(f"only {len(msg.signatures)} consistency signatures")
    payload = labels.consistency_payload(ctx, self._signed or (), self._seed)
    for v, sig in msg.signatures:
        if v not in signed:
            raise RemoteProtocolError("signature from a non-survivor", party=v)
        try:
            ctx.verify_key(v).verify(sig, payload)
        except InvalidSignature:
            raise RemoteProtocolError("consistency signature invalid", party=v) from None


def _attack() -> tuple[Driver, SplitViewServer]:
    cfg = SecAggConfig(protocol="secagg+", n=20, active=True)
    assert (cfg.k, cfg.threshold) == (8, 6)
    d = Driver(cfg, dim=5, seed=11)
    server = SplitViewServer(d)
    seed = server.commit_reveal()
    plan, status = search(d.ctx, views=3, rule="cohort", time_limit=60, seed=seed)
    assert status == "feasible" and plan is not None
    assert not plan.corrupt
    server.plan = plan
    server.run()
    return d, server


def test_old_rule_split_views_read_one_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SecAggClient, "_check_signatures", _old_rule)
    d, server = _attack()
    plan = server.plan
    assert not server.errors  # every client passed every check
    assert set(server.answers) == set(plan.answers)
    for cid, ans in server.answers.items():  # nobody revealed both secrets of one peer
        assert not {u for u, _ in ans.seed_shares} & {u for u, _ in ans.key_shares}
    seeds = {u for a in server.answers.values() for u, _ in a.seed_shares}
    keys = {u for a in server.answers.values() for u, _ in a.key_shares}
    assert plan.target in seeds and plan.target not in keys
    assert len({u for u in plan.answers.values()}) >= 2  # it took more than one view
    ring = server.read_target()
    x = d.xs[plan.target]
    np.testing.assert_array_equal(ring, encode_input(d.ctx, *check_input(d.ctx, x, None)))


def test_split_views_are_refused_before_anything_is_revealed() -> None:
    _, server = _attack()
    plan = server.plan
    assert not server.answers
    assert set(server.errors) == set(plan.answers)
    for cid, err in server.errors.items():
        assert type(err) is RemoteProtocolError and "neighbourhood" in str(err)
        c = server.clients[cid]
        assert c.stage is ClientStage.ABORTED and not c._s.held and c._s.own == (b"", b"")
    with pytest.raises(ThresholdError):
        server.read_target()

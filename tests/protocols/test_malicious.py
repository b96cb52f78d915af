"""A malicious server, replays, tampering, bad inputs and unknown peers: the honest party
refuses with the right typed error, reveals nothing, and the other clients are unharmed."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import kex
from secagg.protocols import (
    ClientStage,
    LocalProtocolError,
    RemoteProtocolError,
    RoundContext,
    ServerStage,
    ThresholdError,
    create_client,
    create_server,
    wire,
)
from secagg.protocols.harness import RoundSimulation
from secagg.protocols.messages import (
    ConsistencyRequest,
    Roster,
    RosterEntry,
    SharesRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from tests.protocols.helpers import Driver, bound, make_config, make_inputs, roundtrip


def at_unmask(**kw: Any) -> Driver:
    """secagg+ with n=10, k=4, t=3: client 8 dropped at share, 9 at masked input; the honest
    unmask requests sit in ``d.inbox``."""
    cfg = make_config("secagg+", n=10, k=4, threshold=3, **kw)
    d = Driver(cfg)
    d.start()
    d.step(skip={8})  # rosters to all but 8: it never shares
    d.step(skip={9})  # relays: 9 never sends its masked input
    if cfg.active:
        d.step()  # closes masked_input, consistency requests answered
    d.close()  # the unmask requests wait in d.inbox
    assert d.server.stage is ServerStage.UNMASK
    return d


def refuses(d: Driver, cid: int, msg: Any, err: type[Exception] = RemoteProtocolError,
            match: str | None = None) -> None:
    client = d.clients[cid]
    with pytest.raises(err, match=match):
        client.receive(roundtrip(msg))
    assert client.stage is ClientStage.ABORTED
    assert not client._s.held and client._s.own == (b"", b"") and client._s.seed == bytearray()
    with pytest.raises(LocalProtocolError):
        client.receive(roundtrip(d.inbox[cid]))  # and nothing is ever revealed later


def _victim(d: Driver) -> tuple[int, UnmaskRequest]:
    cid = next(c for c, m in d.inbox.items() if m.dropped)  # a neighbour of 9
    return cid, d.inbox[cid]  # type: ignore[return-value]


def test_both_shares_of_one_peer() -> None:
    d = at_unmask()
    cid, req = _victim(d)
    v = next(u for u in req.survivors if u != cid)
    evil = dataclasses.replace(req, dropped=tuple(sorted({*req.dropped, v})))
    refuses(d, cid, evil)
    # and the mirror image: a dropped neighbour also listed as survivor
    d = at_unmask()
    cid, req = _victim(d)
    evil = dataclasses.replace(req, survivors=tuple(sorted({*req.survivors, *req.dropped})))
    refuses(d, cid, evil)


def test_fewer_than_t_survivors() -> None:
    d = at_unmask()
    cid, req = _victim(d)
    others = [u for u in req.survivors if u != cid]
    evil = UnmaskRequest(req.round_id, (cid,), tuple(sorted({*req.dropped, *others})))
    refuses(d, cid, evil, ThresholdError)


def test_non_neighbours_and_uncommitted() -> None:
    d = at_unmask()
    cid, req = _victim(d)
    stranger = next(u for u in range(10) if u not in d.clients[cid].neighbours and u != cid)
    refuses(d, cid, dataclasses.replace(req, dropped=tuple(sorted({*req.dropped, stranger}))))
    # 8 dropped before sharing: even if it is a neighbour, its shares were never committed
    d = at_unmask()
    holder = next(c for c in range(8) if 8 in d.clients[c].neighbours)
    req = d.inbox[holder]
    assert 8 not in d.clients[holder].committed
    refuses(d, holder, dataclasses.replace(req, dropped=tuple(sorted({*req.dropped, 8}))))


def test_incomplete_or_self_dropping_requests() -> None:
    d = at_unmask()
    cid, req = _victim(d)
    refuses(d, cid, dataclasses.replace(req, dropped=()))  # leaves a neighbour out
    d = at_unmask()
    cid, req = _victim(d)
    refuses(d, cid, UnmaskRequest(req.round_id, tuple(u for u in req.survivors if u != cid),
                                  tuple(sorted({*req.dropped, cid}))))


def test_asked_twice() -> None:
    d = at_unmask()
    cid, req = _victim(d)
    out = d.clients[cid].receive(roundtrip(req))
    assert isinstance(out[0], UnmaskResponse) and d.clients[cid].stage is ClientStage.DONE
    with pytest.raises(RemoteProtocolError):
        d.clients[cid].receive(roundtrip(req))
    assert d.clients[cid].stage is ClientStage.ABORTED


def test_wrong_round_request() -> None:
    d = at_unmask()
    cid, req = _victim(d)
    refuses(d, cid, dataclasses.replace(req, round_id=req.round_id + 1))


def test_different_survivor_lists_active() -> None:
    d = Driver(make_config("secagg", n=5, threshold=3, active=True))
    d.start()
    d.step()
    d.step()
    d.close()  # masked inputs in: U3 = {0..4}; ConsistencyRequests in the inbox
    full = d.inbox[0]
    assert isinstance(full, ConsistencyRequest) and full.survivors == (0, 1, 2, 3, 4)
    split = ConsistencyRequest(full.round_id, (0, 1, 2, 3))  # tells 0..3 that 4 dropped
    sigs = {}
    for cid in range(5):
        msg = split if cid in (1, 2) else full
        (reply,) = d.clients[cid].receive(roundtrip(msg))
        sigs[cid] = reply.signature  # type: ignore[union-attr]
    bundle = tuple(sorted(sigs.items()))
    # 0 signed the full set; the bundle carries 1's and 2's signatures on another set
    refuses(d, 0, UnmaskRequest(full.round_id, (0, 1, 2, 3, 4), (), bundle))
    # 1 was told 4 dropped: the others' signatures do not cover its set, it reveals no key
    d.inbox[1] = UnmaskRequest(full.round_id, (0, 1, 2, 3), (4,), bundle)
    refuses(d, 1, d.inbox[1])
    # an unmask request contradicting what 3 signed is refused too
    refuses(d, 3, UnmaskRequest(full.round_id, (0, 1, 2, 3), (4,),
                                tuple((c, s) for c, s in bundle if c not in (1, 2))))


def test_too_few_consistency_signatures() -> None:
    d = at_unmask(active=True)
    cid, req = _victim(d)
    refuses(d, cid, dataclasses.replace(req, signatures=req.signatures[:2]))
    # t signatures in all, but not t from the neighbourhood of each share owner: refused
    d = at_unmask(active=True)
    cid, req = _victim(d)
    near = d.clients[cid].committed | {cid}
    owner = min(near)
    far = tuple((c, g) for c, g in sorted(d.server._sigs.items()) if c != owner
                and c not in d.clients[owner].neighbours)  # 8 signers, <= 5 near the owner
    assert len(far) >= d.ctx.config.threshold
    refuses(d, cid, dataclasses.replace(req, signatures=far))
    d = at_unmask(active=True)
    cid, req = _victim(d)
    forged = tuple((c, bytes(64)) for c, _ in req.signatures)
    refuses(d, cid, dataclasses.replace(req, signatures=forged))


class EvilServer(RoundSimulation):
    """Asks every client for both shares of its first neighbour."""

    def to_client(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        msg = wire.decode(data)
        if isinstance(msg, UnmaskRequest):
            both = set(msg.survivors) - {cid}
            msg = dataclasses.replace(msg, dropped=tuple(sorted({*msg.dropped, min(both)})))
        return wire.encode(msg)


def test_the_round_aborts_when_every_client_refuses() -> None:
    cfg = make_config("secagg", n=5, threshold=3)
    sim = EvilServer(cfg, make_inputs(range(5), 3))
    with pytest.raises(ThresholdError):
        sim.run()
    assert all(isinstance(e, RemoteProtocolError) for e in sim.client_errors.values())
    assert len(sim.client_errors) == 5 and not sim.server._seed_ys


# -- roster tampering -------------------------------------------------------------------


def _roster(d: Driver, cid: int = 0) -> Roster:
    d.start()
    msg = d.close()[cid]
    assert isinstance(msg, Roster)
    return msg


def test_roster_tampering() -> None:
    cfg = make_config("secagg", n=4, threshold=3, active=True)
    cases = []
    d = Driver(cfg)
    r = _roster(d)
    mine = r.entries[0]
    other = r.entries[1]
    cases.append((d, r, dataclasses.replace(
        r, entries=(RosterEntry(0, other.c_public, mine.s_public, mine.signature),
                    *r.entries[1:]))))
    d = Driver(cfg)
    r = _roster(d)
    e1 = r.entries[1]
    forged = RosterEntry(1, r.entries[2].c_public, e1.s_public, e1.signature)
    cases.append((d, r, dataclasses.replace(r, entries=(r.entries[0], forged, *r.entries[2:]))))
    d = Driver(make_config("secagg+", n=10, k=4, threshold=3))
    r = _roster(d)
    stranger = next(u for u in range(10) if u not in d.server.graph.neighbours(0) and u != 0)
    extra = RosterEntry(stranger, bytes(range(32)), bytes(range(1, 33)))
    cases.append((d, r, Roster(r.round_id, tuple(sorted((*r.entries, extra),
                                                         key=lambda e: e.client_id)),
                               r.reveals)))
    for d, _, evil in cases:
        d.inbox = {0: evil}
        refuses(d, 0, evil)
    d = Driver(cfg)
    r = _roster(d)
    refuses(d, 0, Roster(r.round_id, tuple(e for e in r.entries if e.client_id < 2), r.reveals),
            ThresholdError)
    # Each check on its own: the cases above trip several at once. A peer's keys replaced by
    # fresh ones (the server's own), or swapped, keep every key distinct and mine intact:
    # only the peer's signature refuses them (active mode).
    fresh = kex.KeyPair.generate().public_bytes()
    for edit in (lambda e: {"c_public": fresh}, lambda e: {"s_public": fresh},
                 lambda e: {"c_public": e.s_public, "s_public": e.c_public}):
        d = Driver(cfg)
        r = _roster(d)
        e1 = r.entries[1]
        evil = Roster(r.round_id, (r.entries[0], dataclasses.replace(e1, **edit(e1)),
                                   *r.entries[2:]), r.reveals)
        refuses(d, 0, evil, match="bad key signature")
        assert d.clients[0].error.party == 1  # type: ignore[union-attr]
    # passive mode has no signatures: my own keys replaced, or a peer's key duplicated
    passive = make_config("secagg", n=4, threshold=3)
    d = Driver(passive)
    r = _roster(d)
    mine = dataclasses.replace(r.entries[0], c_public=fresh)
    refuses(d, 0, Roster(r.round_id, (mine, *r.entries[1:]), r.reveals),
            match="altered my public keys")
    d = Driver(passive)
    r = _roster(d)
    dup = dataclasses.replace(r.entries[2], s_public=r.entries[1].s_public)
    refuses(d, 0, Roster(r.round_id, (*r.entries[:2], dup, *r.entries[3:]), r.reveals),
            match="not all distinct")


# -- replays ----------------------------------------------------------------------------


def test_omitted_neighbours_are_treated_as_dropped() -> None:
    d = Driver(make_config("secagg", n=4, threshold=3))
    r = _roster(d)
    (shares,) = d.clients[0].receive(roundtrip(Roster(r.round_id, r.entries[:-1], r.reveals)))
    assert d.clients[0].advertised == {1, 2}
    assert [u for u, _ in shares.ciphertexts] == [1, 2]  # type: ignore[union-attr]


def test_replayed_roster_from_an_earlier_round() -> None:
    cfg = make_config("secagg", n=3)
    old, new = Driver(cfg, round_id=1), Driver(cfg, round_id=2)
    old_roster = _roster(old)
    new.start()
    new.inbox = new.close()
    refuses(new, 0, old_roster, match="round 1, this is round 2")
    # active mode, same identities in both rounds: the server splices the peers' signed
    # round-1 adverts into a round-2 roster that carries the victim's own round-2 keys; the
    # signatures bind the round, so the replayed entries are refused
    acfg = make_config("secagg", n=3, active=True)
    old = Driver(acfg, round_id=1)
    old_roster = _roster(old)
    new = Driver(acfg, round_id=2)
    new.identities = old.identities
    new.ctx = RoundContext(config=acfg, round_id=2, dim=3, client_ids=range(3), verify_keys={
        i: k.verify_key for i, k in old.identities.items()})
    new.server = create_server(new.ctx)
    new.clients = {i: create_client(new.ctx, i, identity=k) for i, k in old.identities.items()}
    current = _roster(new)
    spliced = Roster(2, (current.entries[0], *old_roster.entries[1:]), current.reveals)
    assert spliced.entries[1:] != current.entries[1:]
    refuses(new, 0, spliced, match="bad key signature")


def test_replayed_share_ciphertexts_do_not_open() -> None:
    cfg = make_config("secagg", n=3)
    old, new = Driver(cfg, round_id=1), Driver(cfg, round_id=2)
    old.start()
    old.step()
    old_relay = old.close()[0]
    assert isinstance(old_relay, SharesRelay)
    new.start()
    new.step()
    new.close()
    replay = SharesRelay(2, old_relay.ciphertexts)  # rewrapped with the new round's id
    with pytest.raises(RemoteProtocolError) as info:
        new.clients[0].receive(roundtrip(replay))
    assert info.value.party == old_relay.ciphertexts[0][0]


def test_replayed_message_at_the_server() -> None:
    cfg = make_config("secagg", n=4, threshold=3)
    old, new = Driver(cfg, round_id=1), Driver(cfg, round_id=2)
    old.start()
    new.start(skip={0})
    with pytest.raises(RemoteProtocolError) as info:
        new.server.receive(0, roundtrip(old.sent[0][0]))
    assert info.value.party == 0 and 0 in new.server.barred
    res = new.run(drop={"advertise": {0}})  # 0 is barred for this round; the rest finish
    assert res.included == (1, 2, 3)


class FlipCiphertext(RoundSimulation):
    def __init__(self, *a: Any, target: int, index: int, pos: int, bit: int, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.target, self.index, self.pos, self.bit = target, index, pos, bit
        self.victim_sender = -1

    def to_client(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        msg = wire.decode(data)
        if cid == self.target and isinstance(msg, SharesRelay):
            cts = list(msg.ciphertexts)
            u, ct = cts[self.index % len(cts)]
            flipped = bytearray(ct)
            flipped[self.pos % len(ct)] ^= 1 << self.bit
            cts[self.index % len(cts)] = (u, bytes(flipped))
            self.victim_sender = u
            return wire.encode(SharesRelay(msg.round_id, tuple(cts)))
        return data


@settings(max_examples=15, deadline=None)
@given(target=st.integers(0, 5), index=st.integers(0, 10), pos=st.integers(0, 200),
       bit=st.integers(0, 7))
def test_flipped_ciphertext_byte(target: int, index: int, pos: int, bit: int) -> None:
    cfg = make_config("secagg", n=6, threshold=4)
    xs = make_inputs(range(6), 3)
    sim = FlipCiphertext(cfg, xs, target=target, index=index, pos=pos, bit=bit)
    r = sim.run()
    err = r.client_errors[target]
    assert isinstance(err, RemoteProtocolError) and err.party == sim.victim_sender
    assert r.included == tuple(i for i in range(6) if i != target)
    assert np.max(np.abs(r.aggregate - sum(xs[i] for i in r.included))) <= bound(cfg, 5)


class BadKeyShare(RoundSimulation):
    def to_server(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        msg = wire.decode(data)
        if isinstance(msg, UnmaskResponse) and msg.key_shares and cid == 0:
            (u, share), *rest = msg.key_shares
            bad = (int.from_bytes(share, "big") ^ 1).to_bytes(33, "big")
            msg = dataclasses.replace(msg, key_shares=((u, bad), *rest))
        return wire.encode(msg)


def test_inconsistent_key_shares_are_detected() -> None:
    cfg = make_config("secagg", n=5, threshold=3)
    sim = BadKeyShare(cfg, make_inputs(range(5), 3), drop={"masked_input": {4}})
    with pytest.raises(RemoteProtocolError, match="not advertised") as info:
        sim.run()
    assert info.value.party == 4

"""Removable noise ("add, then remove"): who releases which component, and what a lying
server gets.

The rule (protocols/client.py): a survivor releases its OWN component ``j`` iff the trusted
survivor count ``s`` makes it excess (``j > n - s``). In active mode ``s`` is the size of the
set the client signed, and only when that set carries a quorum of valid signatures over the
cohort (:func:`release_quorum`); in passive mode the (honest) server's count.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.protocols.client import release_quorum, removable_levels
from secagg.protocols.errors import LocalProtocolError, RemoteProtocolError, ThresholdError
from secagg.protocols.harness import STAGES, run_round
from secagg.protocols.messages import UnmaskRequest, UnmaskResponse
from secagg.protocols.transitions import ClientStage, ServerStage
from tests.protocols.helpers import Driver, make_config, roundtrip


def _seeds(n: int, t: int, ids: range | list[int]) -> dict[int, dict[int, bytes]]:
    return {i: {j: os.urandom(32) for j in removable_levels(n, t)} for i in ids}


def _hold(d: Driver) -> dict[int, dict[int, bytes]]:
    n, t = len(d.ctx.client_ids), d.ctx.config.threshold
    seeds = _seeds(n, t, list(d.clients))
    for cid, c in d.clients.items():
        c.hold_removable(seeds[cid])  # type: ignore[attr-defined]
    return seeds


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([("secagg", 5, None), ("secagg+", 9, 4)]), st.booleans(),
       st.data())
def test_released_levels_are_exactly_the_excess(proto: tuple[str, int, int | None],
                                                active: bool, data: st.DataObject) -> None:
    """Every dropout pattern the threshold allows: each answering survivor releases exactly
    its levels ``j > n - |U3|`` (every level of a client that never answers stays in), the
    released seeds are the ones it holds, and the sum is still exact."""
    name, n, k = proto
    cfg = make_config(name, n=n, k=k, active=active, threshold=3)
    stage_of = {i: data.draw(st.sampled_from([None, *STAGES]), label=f"drop {i}")
                for i in range(n)}
    drop = {s: [i for i, v in stage_of.items() if v == s] for s in STAGES}
    seeds = _seeds(n, 3, range(n))
    xs = {i: np.full(4, 0.01 * i) for i in range(n)}
    try:
        res = run_round(cfg, xs, drop=drop, removable=seeds)
    except ThresholdError:  # fewer than t somewhere: the round aborts, nothing to check
        return
    u3 = set(res.output.included)
    np.testing.assert_allclose(res.aggregate, sum(xs[i] for i in u3), atol=1e-3)
    answered = {i for i in u3 if stage_of[i] not in ("consistency", "unmask")}
    want = tuple(j for j in removable_levels(n, 3) if j > n - len(u3))
    assert set(res.released_noise) == (answered if want else set())
    for owner, got in res.released_noise.items():
        assert tuple(got) == want
        assert all(got[j] == seeds[owner][j] for j in want)


def _active_at_unmask(n: int = 6) -> tuple[Driver, dict[int, dict[int, bytes]]]:
    """SecAgg, active, n clients, client n-1 drops at masked input: U3 = n-1 clients."""
    cfg = make_config("secagg", n=n, active=True, threshold=4, corruption_rate=0.05)
    d = Driver(cfg)
    seeds = _hold(d)
    d.start()
    d.step()
    d.step(skip={n - 1})
    d.step()  # consistency requests answered
    d.close()
    assert d.server.stage is ServerStage.UNMASK
    return d, seeds


def test_a_server_inflating_the_survivor_count_is_refused() -> None:
    """Active: claiming every client survived (to get every level) contradicts the set the
    client signed: it aborts before revealing anything, masks or noise."""
    d, _ = _active_at_unmask()
    victim = 0
    req = d.inbox[victim]
    assert isinstance(req, UnmaskRequest) and req.survivor_count == 5
    lie = dataclasses.replace(req, survivor_count=6)
    client = d.clients[victim]
    with pytest.raises(RemoteProtocolError, match="survivor count"):
        client.receive(roundtrip(lie))
    assert client.stage is ClientStage.ABORTED and not client._s.removable  # type: ignore[attr-defined]


def _passive_at_unmask(drop: set[int]) -> Driver:
    """SecAgg, passive, n=5, t=3, every client holding removable noise; ``drop`` never send
    their masked input. The unmask requests wait in ``d.inbox``."""
    d = Driver(make_config("secagg", n=5, threshold=3))
    _hold(d)
    d.start()
    d.step()
    d.step(skip=drop)
    d.close()
    return d


def test_passive_full_graph_count_must_match_the_request() -> None:
    d = _passive_at_unmask(drop={4})
    req = d.inbox[0]
    assert isinstance(req, UnmaskRequest) and req.survivor_count == 4
    with pytest.raises(RemoteProtocolError, match="survivor count"):
        d.clients[0].receive(roundtrip(dataclasses.replace(req, survivor_count=5)))


def _sparse_active_at_unmask() -> tuple[Driver, dict[int, dict[int, bytes]]]:
    """SecAgg+, active, n=10, k=4, t=3, c=0; client 9 drops at masked input (U3: 9)."""
    cfg = make_config("secagg+", n=10, k=4, threshold=3, active=True)
    d = Driver(cfg)
    seeds = _hold(d)
    d.start()
    d.step()
    d.step(skip={9})
    d.step()
    d.close()
    return d, seeds


@pytest.mark.parametrize("short", [True, False])
def test_without_a_quorum_nothing_is_released(short: bool) -> None:
    """Active, sparse graph: ``t`` signatures per neighbourhood open the mask shares, but the
    noise release needs ``release_quorum`` signatures over the cohort (8 of 10 here). A
    request one signature short (a server hiding signatures, or split views that no single
    set wins) is answered with the mask shares and NO noise seed; with the quorum, exactly
    the excess levels. Control: the same request with the quorum releases."""
    d, seeds = _sparse_active_at_unmask()
    n, t = 10, 3
    quorum = release_quorum(n, t, 0)
    assert quorum == 8
    victim = 0
    req = d.inbox[victim]
    assert isinstance(req, UnmaskRequest) and len(req.signatures) == 9
    graph = d.server.graph  # type: ignore[attr-defined]
    owners = d.clients[victim].committed | {victim}  # type: ignore[attr-defined]
    near = set().union(*(graph.neighbours(u) | {u} for u in owners))
    ordered = sorted(req.signatures, key=lambda p: (p[0] not in near, p[0]))
    keep = quorum - 1 if short else quorum
    assert len([p for p in ordered[:keep] if p[0] in near]) >= t
    cut = dataclasses.replace(req, signatures=tuple(sorted(ordered[:keep])))
    out = d.clients[victim].receive(roundtrip(cut))
    assert isinstance(out[0], UnmaskResponse) and out[0].seed_shares
    want = tuple((j, seeds[victim][j]) for j in removable_levels(n, t) if j > n - 9)
    assert out[0].noise_seeds == (() if short else want)


def test_the_server_refuses_wrong_or_foreign_levels() -> None:
    """A client releasing levels the count does not make excess (or a sender claiming to
    release for someone else: levels are always the sender's own) is rejected."""
    d = _passive_at_unmask(drop={4})
    out = d.clients[0].receive(roundtrip(d.inbox[0]))[0]
    assert isinstance(out, UnmaskResponse) and [j for j, _ in out.noise_seeds] == [2]
    bad = dataclasses.replace(out, noise_seeds=((1, os.urandom(32)), (2, os.urandom(32))))
    with pytest.raises(RemoteProtocolError, match="released noise levels"):
        d.server.receive(0, roundtrip(bad))
    with pytest.raises(ValueError, match="start at 1"):
        UnmaskResponse(1, 0, (), (), ((0, bytes(32)),))


def test_hold_removable_is_checked() -> None:
    cfg = make_config("secagg", n=5, threshold=3)
    d = Driver(cfg)
    c = d.clients[0]
    with pytest.raises(LocalProtocolError, match="levels"):
        c.hold_removable({1: bytes(32)})  # type: ignore[attr-defined]
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        c.hold_removable({1: bytes(31), 2: bytes(32)})  # type: ignore[attr-defined]
    c.start(d.xs[0])
    with pytest.raises(LocalProtocolError, match="before start"):
        c.hold_removable({1: bytes(32), 2: bytes(32)})  # type: ignore[attr-defined]


def test_a_replayed_unmask_request_releases_nothing_more() -> None:
    d = _passive_at_unmask(drop=set())
    first = d.clients[0].receive(roundtrip(d.inbox[0]))
    assert first and isinstance(first[0], UnmaskResponse)
    with pytest.raises((LocalProtocolError, RemoteProtocolError)):
        d.clients[0].receive(roundtrip(d.inbox[0]))


@pytest.mark.parametrize("n", range(3, 9))
def test_no_two_sets_when_one_has_the_release_quorum(n: int) -> None:
    """Exhaustive search over every way the honest clients can sign (set A, set B, or
    nothing; each signs at most one set) with ``c`` corrupt clients signing both: whenever A
    reaches the release quorum, B never reaches ``t``, for every ``t`` and ``c`` with
    ``2t > n + c`` (the active-mode condition). So no share of any client is revealed under a
    set other than the one the noise release was counted on. Control: with the quorum
    lowered by one, some plan exists for some (t, c)."""
    found_with_lower = False
    for c in range(0, n // 2):
        for t in range((n + c) // 2 + 1, n + 1):
            q = release_quorum(n, t, c)
            honest = n - c
            for a in range(honest + 1):  # by symmetry only the counts matter
                for b in range(honest - a + 1):
                    if a + c >= q:
                        assert b + c < t, (n, t, c, a, b)
                    if a + c >= q - 1 and b + c >= t:
                        found_with_lower = True
    assert found_with_lower or n < 4
    # and the counting is exact: enumerate signer assignments for small n directly
    if n <= 6:
        for c, t in itertools.product(range(0, 2), range(2, n + 1)):
            if 2 * t <= n + c:
                continue
            q = release_quorum(n, t, c)
            for plan in itertools.product("ABN", repeat=n - c):
                a, b = plan.count("A") + c, plan.count("B") + c
                assert not (a >= q and b >= t)

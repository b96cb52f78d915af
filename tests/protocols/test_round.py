"""Whole rounds through the harness: correct sums under every dropout pattern, or a
ThresholdError exactly when the paper says the round cannot complete."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from secagg.protocols import (
    RoundContext,
    SecAggConfig,
    ThresholdError,
    create_client,
    create_server,
    run_round,
)
from secagg.protocols.harness import STAGES, RoundSimulation
from secagg.protocols.params import min_threshold
from tests.protocols.helpers import bound, make_config, make_inputs


def completes(sim: RoundSimulation, drop: dict[str, set[int]]) -> bool:
    """The paper's condition for an honest round: every set, and every secret that must be
    rebuilt, keeps at least t parties; and every client that committed to a graph nonce
    reveals it. The graph is the one the round drew (known once the reveals are in)."""
    cfg = sim.ctx.config
    t, ids = cfg.threshold, set(range(cfg.n))

    def gone(stage: str) -> set[int]:
        return {i for s in STAGES[: STAGES.index(stage) + 1] for i in drop.get(s, ())}

    u1 = ids - gone("advertise")
    if len(u1) < t or u1 & gone("reveal"):
        return False
    nb = sim.server.graph.neighbours  # type: ignore[attr-defined]
    rostered = {v for v in u1 if len(nb(v) & u1) + 1 >= t}  # others can never be unmasked
    u2 = rostered - gone("share")
    u3 = u2 - gone("masked_input")
    u4 = u3 - gone("consistency") if cfg.active else u3
    u5 = u4 - gone("unmask")
    if min(len(u2), len(u3), len(u4), len(u5)) < t:
        return False
    if any(len(nb(v) & u2) + 1 < t for v in u2):
        return False
    if any(len(nb(u) & u3) + (u in u3) < t for u in u2):
        return False
    return all(len((nb(u) | {u}) & u5) >= t for u in u3) and all(
        len(nb(u) & u5) >= t for u in u2 - u3)


@st.composite
def rounds(draw: st.DrawFn, max_n: int = 40) -> tuple[SecAggConfig, dict[str, set[int]]]:
    n = draw(st.integers(2, max_n) if draw(st.booleans()) else st.integers(2, 12))
    protocol = draw(st.sampled_from(["secagg", "secagg+"]))
    k = n - 1
    if protocol == "secagg+" and n > 3:
        k = draw(st.sampled_from([*range(2, n - 1, 2), n - 1]))
    t = draw(st.integers(min_threshold(k), k + 1))
    cfg = make_config(protocol, n=n, k=k, threshold=t)
    few = st.sets(st.integers(0, n - 1), max_size=max(1, n // 5))
    # A drop at "reveal" always aborts the round: drawn rarely, so most rounds get far.
    drop = {s: draw(few) for s in STAGES
            if (draw(st.integers(0, 9)) == 0 if s == "reveal" else draw(st.booleans()))}
    return cfg, drop


def check(cfg: SecAggConfig, drop: dict[str, set[int]], dim: int = 4, **kw: Any) -> Any:
    xs = make_inputs(range(cfg.n), dim, seed=cfg.n)
    sim = RoundSimulation(cfg, xs, drop=drop, **kw)
    try:
        r = sim.run()
    except ThresholdError:
        assert not completes(sim, drop)
        return None
    assert completes(sim, drop)
    gone = {i for s in STAGES[: STAGES.index("masked_input") + 1] for i in drop.get(s, ())}
    assert set(r.included) <= set(range(cfg.n)) - gone
    nb = sim.server.graph.neighbours  # type: ignore[attr-defined]
    u1 = set(range(cfg.n)) - set(drop.get("advertise", ()))
    left_out = {v for v in u1 if len(nb(v) & u1) + 1 < cfg.threshold}
    assert r.included == tuple(sorted(set(range(cfg.n)) - gone - left_out))
    expected = sum((xs[i] for i in r.included), np.zeros(dim))
    assert np.max(np.abs(r.aggregate - expected)) <= bound(cfg, len(r.included))
    assert r.weight_total == len(r.included)
    assert not r.client_errors and not r.server_rejections
    return r


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_any_dropout_pattern(case: tuple[SecAggConfig, dict[str, set[int]]]) -> None:
    event(f"completes={check(*case) is not None}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds(max_n=10))
def test_any_dropout_pattern_active(case: tuple[SecAggConfig, dict[str, set[int]]]) -> None:
    cfg, drop = case
    active = make_config(cfg.protocol.value, n=cfg.n, k=cfg.k, threshold=cfg.threshold,
                         active=True)
    event(f"completes={check(active, drop) is not None}")


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "reveal"])
def test_each_stage_semantics(stage: str) -> None:
    cfg = make_config("secagg", n=6, threshold=4, active=True)
    r = check(cfg, {stage: {2, 4}})
    assert r is not None
    counted = stage in ("consistency", "unmask")
    assert (2 in r.included) is counted and (4 in r.included) is counted


@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
def test_a_committer_that_does_not_reveal_aborts_the_round(protocol: str) -> None:
    """Dropping a silent committer would let the server pick the graph seed among subsets of
    the reveals: the round aborts instead, before any share exists (one drop is enough, even
    with every other client there)."""
    cfg = make_config(protocol, n=12, **({"k": 6, "threshold": 5} if protocol == "secagg+" else {}))
    sim = RoundSimulation(cfg, make_inputs(range(12), 3), drop={"reveal": {5}})
    with pytest.raises(ThresholdError, match="did not reveal") as err:
        sim.run()
    assert err.value.party == 5
    assert all(c.stage.value == "await_roster" for i, c in sim.clients.items() if i != 5)


def test_masked_input_dropouts_sparse_graph() -> None:
    cfg = make_config("secagg+", n=30, k=8, threshold=5)
    r = check(cfg, {"masked_input": {0, 7, 13}, "share": {21}})
    assert r is not None and len(r.included) == 26


def test_threshold_error_is_typed_and_names_the_stage() -> None:
    cfg = make_config("secagg", n=5, threshold=4)
    with pytest.raises(ThresholdError, match="masked_input"):
        run_round(cfg, make_inputs(range(5), 3), drop={"masked_input": {0, 1}})


def test_weighted_fedavg() -> None:
    cfg = make_config("secagg+", n=12, k=6, threshold=5, weighted=True, max_weight=100.0)
    xs = make_inputs(range(12), 5, seed=3)
    w = {i: float(5 * i) for i in range(12)}
    r = run_round(cfg, xs, drop={"masked_input": {3}}, weights=w)
    inc = r.included
    exact = sum(w[i] * xs[i] for i in inc)
    assert r.weight_total == pytest.approx(sum(w[i] for i in inc), abs=1e-2)
    np.testing.assert_allclose(r.aggregate, exact, atol=100 * bound(cfg, len(inc)))
    np.testing.assert_allclose(r.mean, exact / sum(w[i] for i in inc), atol=1e-3)


@pytest.mark.parametrize("protocol", ["plain", "secagg", "secagg+"])
def test_protocols_agree_and_report(protocol: str) -> None:
    n, dim = 10, 1000
    cfg = SecAggConfig(protocol=protocol, n=n)
    xs = {i: x.astype(np.float32) for i, x in make_inputs(range(n), dim).items()}
    r = run_round(cfg, xs, drop={"unmask": {1}})
    assert r.included == tuple(range(n))
    np.testing.assert_allclose(r.aggregate, sum(x.astype(np.float64) for x in xs.values()),
                               atol=bound(cfg, n))
    assert r.bytes_up_per_client <= dim * cfg.bits / 8 + (3000 if cfg.is_secure else 40)
    assert r.server_s > 0 and r.client_s_max >= r.client_s_mean > 0
    assert r.total_compute_s == pytest.approx(r.server_s + sum(r.client_s.values()))
    masks = (cfg.k + 1) * dim * n if cfg.is_secure else 0
    assert r.client_mask_words == masks
    assert r.server_mask_words == (n * dim if cfg.is_secure else 0)


def test_stochastic_rounding_round() -> None:
    from secagg.fixedpoint import Rounding

    cfg = make_config("secagg", n=5, rounding=Rounding.STOCHASTIC)
    xs = make_inputs(range(5), 50)
    r = run_round(cfg, xs)
    assert np.max(np.abs(r.aggregate - sum(xs.values()))) <= 5 * 2.0**-cfg.scale


def _same_keys_round(cfg: SecAggConfig, round_id: int, identities: dict[int, Any]) -> Any:
    """A Driver whose clients keep the same identity keys from round to round."""
    from tests.protocols.helpers import Driver

    d = Driver(cfg, dim=3, round_id=round_id)
    ids = sorted(identities)
    d.identities = identities
    d.ctx = RoundContext(config=cfg, round_id=round_id, dim=3, client_ids=ids,
                         verify_keys={i: k.verify_key for i, k in identities.items()})
    d.server = create_server(d.ctx)
    d.clients = {i: create_client(d.ctx, i, identity=identities[i]) for i in ids}
    return d


def test_round_ids_separate_rounds() -> None:
    """Signatures of round r are worthless in round r + 1 of the same config, cohort, dimension
    and identity keys: a replayed advert is refused, and a malicious server cannot show a client
    a survivor set backed by the other clients' consistency signatures of the previous round
    (a split view: clients 1..3 are told 0 dropped, client 0 that everyone survived)."""
    import dataclasses

    from secagg.protocols import RemoteProtocolError
    from secagg.protocols.messages import (
        AdvertiseKeys,
        ConsistencyRequest,
        ConsistencySignature,
        UnmaskRequest,
        UnmaskResponse,
    )
    from secagg.sign import SigningKey
    from tests.protocols.helpers import roundtrip

    cfg = make_config("secagg", n=4, active=True, threshold=3)
    ids = [0, 1, 2, 3]
    identities = {i: SigningKey.generate() for i in ids}
    old = _same_keys_round(cfg, 5, identities)
    old.run()  # everyone survives: each client signed the survivor set (0, 1, 2, 3)
    r5 = _same_keys_round(cfg, 5, identities)
    (adv5,) = r5.clients[1].start(r5.xs[1])
    assert isinstance(adv5, AdvertiseKeys)
    signed = dict(old.server._sigs)  # what the server collected in round 5
    assert set(signed) == set(ids)

    new = _same_keys_round(cfg, 6, identities)
    with pytest.raises(RemoteProtocolError, match=r"not signed|signature"):
        new.server.receive(1, roundtrip(dataclasses.replace(adv5, round_id=6)))
    new = _same_keys_round(cfg, 6, identities)
    new.start()
    new.step()  # advertise (and the reveals) -> rosters
    new.step()  # share -> relays
    new.close()  # masked input -> consistency requests (everyone survived)
    everyone = (0, 1, 2, 3)
    sig0 = new.clients[0].receive(roundtrip(ConsistencyRequest(6, everyone)))
    assert isinstance(sig0[0], ConsistencySignature)
    for v in (1, 2, 3):  # the others are told that 0 dropped
        new.clients[v].receive(roundtrip(ConsistencyRequest(6, (1, 2, 3))))
    forged = UnmaskRequest(6, everyone, (), tuple(sorted(
        {**signed, 0: sig0[0].signature}.items())))
    with pytest.raises(RemoteProtocolError, match="consistency signature invalid"):
        new.clients[0].receive(roundtrip(forged))
    # the check is the round binding, not the request's shape: with this round's signatures
    # on the set shown, the same client answers
    honest = _same_keys_round(cfg, 6, identities)
    honest.start()
    honest.step()
    honest.step()
    honest.step()  # consistency requests delivered, signatures collected
    requests = honest.close()
    out = honest.clients[0].receive(roundtrip(requests[0]))
    assert isinstance(out[0], UnmaskResponse)


class Tap(RoundSimulation):
    """Records every masked upload the server sees."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.uploads: dict[int, Any] = {}

    def to_server(self, cid: int, stage: Any, data: bytes) -> bytes | None:
        from secagg.packing import unpack
        from secagg.protocols import wire
        from secagg.protocols.messages import MaskedInput

        msg = wire.decode(data)
        if isinstance(msg, MaskedInput):
            self.uploads[cid] = unpack(msg.data, msg.bits, msg.count)
        return data


@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
def test_uploads_look_uniform(protocol: str) -> None:
    # All-zero inputs: what the server receives must be indistinguishable from noise.
    n, dim = 8, 20_000
    cfg = make_config(protocol, n=n, k=4 if protocol == "secagg+" else None)
    sim = Tap(cfg, {i: np.zeros(dim) for i in range(n)})
    r = sim.run()
    assert np.all(r.aggregate == 0)
    top = 1 << (cfg.bits - 1)
    for vec in sim.uploads.values():
        assert abs(float(np.mean(vec)) / top - 1.0) < 0.02  # uniform mean is 2^(bits-1)
        assert abs(float(np.mean(vec >= top)) - 0.5) < 0.02
    first = sim.uploads[0]
    assert not np.array_equal(first, sim.uploads[1])
    again = Tap(cfg, {i: np.zeros(dim) for i in range(n)})
    again.run()
    assert not np.array_equal(first, again.uploads[0])  # fresh masks every round
    # and fresh secrets: the pairwise keys alone would make the uploads differ, but a self-mask
    # seed reused across rounds would let a server that opens it once (u survives) and then
    # opens s_u (u "dropped") unmask u in the later round
    from tests.protocols.helpers import Driver
    seeds, keys = [], []
    for _ in range(2):
        d = Driver(cfg)
        d.start()
        seeds.append(bytes(d.clients[0]._s.seed))
        keys.append(d.sent[0][0].s_public)  # type: ignore[attr-defined]
    assert seeds[0] != seeds[1] and keys[0] != keys[1] and any(seeds[0])


def test_large_cohort_sparse_graph_with_dropouts() -> None:
    # k = 12, t = 7: with 6 clients gone, every closed neighbourhood keeps 7 whatever graph
    # the reveals draw (the graph is fresh each run).
    cfg = make_config("secagg+", n=40, k=12, threshold=7)
    r = check(cfg, {"share": {3}, "masked_input": {5, 17, 33}, "consistency": {8},
                    "unmask": {20}}, dim=16)
    assert r is not None and len(r.included) == 36


@pytest.mark.parametrize("stage", STAGES)
def test_plain_baseline_drop_semantics(stage: str) -> None:
    cfg = SecAggConfig(protocol="plain", n=5)
    xs = make_inputs(range(5), 4)
    r = run_round(cfg, xs, drop={stage: {1}})
    counted = STAGES.index(stage) > STAGES.index("masked_input")
    assert (1 in r.included) is counted
    np.testing.assert_allclose(r.aggregate, sum(xs[i] for i in r.included), atol=bound(cfg, 5))
    with pytest.raises(ThresholdError):
        run_round(cfg, xs, drop={"share": set(range(5))})

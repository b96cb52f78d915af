"""The streaming harness runs the same round as run_round: same outcome, aggregate, traffic."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from secagg import rng
from secagg.protocols import SecAggConfig, ThresholdError, run_round
from secagg.protocols.errors import InputError, LocalProtocolError
from secagg.protocols.harness import STAGES, RoundResult
from secagg.protocols.params import min_threshold
from secagg.protocols.stream import StreamingRound, stream_round
from secagg.protocols.transitions import ServerStage
from secagg.sign import SigningKey
from tests.protocols.helpers import make_config, make_inputs


@st.composite
def rounds(draw: st.DrawFn) -> tuple[SecAggConfig, dict[str, set[int]]]:
    n = draw(st.integers(3, 16))
    protocol = draw(st.sampled_from(["secagg", "secagg+"]))
    k = n - 1
    if protocol == "secagg+" and n > 4:
        k = draw(st.sampled_from([*range(2, n - 1, 2), n - 1]))
    t = draw(st.integers(min_threshold(k), k + 1))
    cfg = make_config(protocol, n=n, k=k, threshold=t, active=draw(st.booleans()))
    few = st.sets(st.integers(0, n - 1), max_size=max(1, n // 4))
    drop = {s: draw(few) for s in STAGES if draw(st.booleans())}
    return cfg, drop


def outcome(run: Callable[[], RoundResult]) -> RoundResult | None:
    """Run with the same identities and the same random bytes every time: the graph depends
    on the verify keys and on the clients' graph nonces, which both harnesses draw in the
    same order (clients started by ascending id). Only this comparison pins them."""
    count = itertools.count(1)
    real = vars(SigningKey)["generate"]
    real_bytes = rng.random_bytes
    SigningKey.generate = classmethod(  # type: ignore[method-assign,assignment]
        lambda cls: cls.from_private_bytes(next(count).to_bytes(32, "big")))
    draws = itertools.count(1)
    rng.random_bytes = lambda n: hashlib.shake_256(  # type: ignore[assignment]
        next(draws).to_bytes(8, "big")).digest(n)
    try:
        return run()
    except ThresholdError:
        return None
    finally:
        SigningKey.generate = real  # type: ignore[method-assign]
        rng.random_bytes = real_bytes  # type: ignore[assignment]


def assert_same(a: RoundResult | None, b: RoundResult | None) -> None:
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    assert a.included == b.included
    assert np.array_equal(a.output.ring, b.output.ring)
    assert np.array_equal(a.aggregate, b.aggregate)
    assert a.weight_total == b.weight_total
    assert (a.bytes_up, a.bytes_down) == (b.bytes_up, b.bytes_down)
    assert a.client_s.keys() == b.client_s.keys()
    assert (a.client_mask_words, a.server_mask_words) == (b.client_mask_words,
                                                          b.server_mask_words)
    assert a.client_errors.keys() == b.client_errors.keys()
    assert len(a.server_rejections) == len(b.server_rejections)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_same_as_run_round_under_any_dropout(case: tuple[SecAggConfig, dict[str, set[int]]],
                                             ) -> None:
    cfg, drop = case
    xs = make_inputs(range(cfg.n), 5, seed=cfg.n)
    a = outcome(lambda: run_round(cfg, xs, drop=drop))
    b = outcome(lambda: stream_round(cfg, xs, drop=drop))
    event(f"completes={a is not None}")
    assert_same(a, b)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_dropout(stage: str) -> None:
    cfg = make_config("secagg+", n=12, k=6, threshold=5, active=True)
    xs = make_inputs(range(12), 7, seed=1)
    drop = {stage: {2, 9}}
    a = outcome(lambda: run_round(cfg, xs, drop=drop))
    b = outcome(lambda: stream_round(cfg, xs, drop=drop))
    assert_same(a, b)
    if stage == "reveal":  # a committer that does not reveal aborts the round, in both
        assert b is None
        return
    assert b is not None and (2 in b.included) is (stage in ("consistency", "unmask"))


def test_regenerated_inputs_and_weights() -> None:
    cfg = make_config("secagg+", n=14, k=6, threshold=5, weighted=True, max_weight=10.0)

    def regenerate(i: int) -> Any:  # from a per-client seed, as the scale benchmark does
        return np.random.default_rng((4, i)).uniform(-1.0, 1.0, 6)

    w = {i: float(i % 5) for i in range(14)}
    drop = {"masked_input": {3, 8}}
    a = outcome(lambda: run_round(cfg, {i: regenerate(i) for i in range(14)}, drop=drop,
                                  weights=w))
    b = outcome(lambda: stream_round(cfg, regenerate, drop=drop, weights=w.get, dim=6))
    assert_same(a, b)


def test_participants_are_released() -> None:
    cfg = make_config("secagg+", n=20, k=8, threshold=6)
    live: dict[str, int] = {}

    class Probe(StreamingRound):
        def after_stage(self, stage: ServerStage) -> None:
            live[stage.value] = len(self.clients)

    xs = make_inputs(range(20), 3)
    sim = Probe(cfg, xs, drop={"advertise": {0, 1}, "masked_input": {5}})
    r = outcome(sim.run)
    assert r is not None
    assert live["advertise"] == 18  # dropped before advertising: never created
    assert live["masked_input"] == 17
    assert not sim.clients and len(r.included) == 17
    ref = outcome(lambda: run_round(cfg, xs, drop={"advertise": {0, 1}, "masked_input": {5}}))
    assert ref is not None and r.client_mask_words == ref.client_mask_words


def test_stage_timers_cover_server_time() -> None:
    cfg = make_config("secagg+", n=10, k=4, threshold=3)
    r = stream_round(cfg, make_inputs(range(10), 4), drop={"masked_input": {1}})
    assert set(r.server_stage_s) == {f"{s}.{w}" for s in ("advertise", "reveal", "share",
                                                          "masked_input", "unmask")
                                     for w in ("receive", "close")}
    assert sum(r.server_stage_s.values()) == pytest.approx(r.server_s)
    assert sum(r.client_stage_s.values()) == pytest.approx(sum(r.client_s.values()))


def test_plain_and_refusals() -> None:
    xs = make_inputs(range(5), 3)
    cfg = make_config("plain", n=5)
    assert_same(run_round(cfg, xs, drop={"share": {2}}), stream_round(cfg, xs, drop={"share": {2}}))
    with pytest.raises(LocalProtocolError):
        stream_round(SecAggConfig(protocol="ckks", n=5), xs)
    with pytest.raises(InputError):
        stream_round(make_config("secagg", n=5), lambda i: xs[0])  # no dim
    bad = dict(xs)
    bad[3] = np.full(3, 5.0)  # beyond the clip range
    with pytest.raises(InputError) as err:
        stream_round(make_config("secagg", n=5), bad)
    assert err.value.party == 3

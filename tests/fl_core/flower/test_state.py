"""The carrier's pieces without Flower's engine: framing, config transfer, and the client state
kept in ``Context.state`` between stages (a participant pickled and restored after every step
must still produce the exact sum)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from secagg.fl_core.flower._state import (
    config_from_json,
    config_to_json,
    dumps_state,
    join_frames,
    loads_state,
    split_frames,
)
from secagg.protocols import SecAggConfig
from secagg.protocols.ckks_harness import KeySetupSimulation
from secagg.protocols.errors import RemoteProtocolError
from secagg.protocols.harness import RoundSimulation


def test_frames_round_trip_and_truncation() -> None:
    frames = [b"", b"a", bytes(range(256)) * 3]
    data = join_frames(frames)
    assert split_frames(data) == frames
    assert split_frames(b"") == []
    with pytest.raises(RemoteProtocolError):
        split_frames(data[:-1])
    with pytest.raises(RemoteProtocolError):
        split_frames(b"\x00\x00")


@pytest.mark.parametrize("proto", ["secagg", "secagg+", "ckks", "ckks+mask"])
def test_config_travels_exactly(proto: str) -> None:
    cfg = SecAggConfig(protocol=proto, n=7, clip=2.0)
    assert config_from_json(config_to_json(cfg)).digest == cfg.digest


@pytest.mark.parametrize("text", ["[]", "{", '{"protocol": "nope", "n": 3}', '{"n": 3}'])
def test_bad_config_is_the_peers_fault(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        config_from_json(text)


def _pickle_between_steps(sim: Any) -> None:
    orig = sim._client

    def client(cid: int, call: Any) -> list[bytes]:
        sim.clients[cid] = loads_state(dumps_state(sim.clients[cid]))
        out: list[bytes] = orig(cid, call)
        return out

    sim._client = client


@pytest.mark.parametrize("proto", ["secagg+", "ckks", "ckks+mask"])
def test_participants_survive_state_round_trips(proto: str) -> None:
    n, dim = 5, 16
    xs = {i: np.random.default_rng(i).uniform(-0.5, 0.5, dim) for i in range(n)}
    sim = RoundSimulation(SecAggConfig(protocol=proto, n=n), xs,
                          drop={"masked_input": {3}} if proto != "ckks" else None)
    _pickle_between_steps(sim)
    res = sim.run()
    want = sum(xs[i] for i in res.included)
    assert not sim.client_errors
    assert len(res.included) == (n if proto == "ckks" else n - 1)
    assert np.max(np.abs(res.aggregate - want)) < 1e-3


def test_key_setup_survives_state_round_trips() -> None:
    sim = KeySetupSimulation(SecAggConfig(protocol="ckks", n=3), [0, 1, 2], epoch=1)
    _pickle_between_steps(sim)
    res = sim.run()
    assert res.keys.holders == (0, 1, 2)
    fp = res.keys.fingerprint
    assert all(res.keys.secret(i).fingerprint == fp for i in range(3))

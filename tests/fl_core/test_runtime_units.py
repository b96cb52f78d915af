"""Fast tests of the runtime's pieces: checkpoints, control messages, CLI refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg.fl_core.cli.entry import main
from secagg.fl_core.errors import EnvelopeError
from secagg.fl_core.runtime.checkpoint import Checkpoint, CheckpointError, resume, write_atomic
from secagg.fl_core.runtime.rounds import (
    CONTROL,
    RoundStart,
    control_message,
    limits_for,
    parse_control,
    synthetic_update,
)
from secagg.protocols.transitions import ServerStage


def test_checkpoint_round_trip_and_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.ckpt"
    ck = Checkpoint.fresh(5, (1, 2, 3)).reserve(1)
    ck = ck.apply(1, np.ones(5), {"round": 1})
    write_atomic(path, ck)
    back = resume(path)
    assert (back.step, back.last_round_id, back.applied_round_id) == (1, 1, 1)
    assert back.membership == (1, 2, 3) and back.history == ({"round": 1},)
    assert np.array_equal(back.state, np.ones(5))
    assert not list(path.parent.glob(".*.tmp"))


def test_apply_is_idempotent_by_round_id() -> None:
    ck = Checkpoint.fresh(3).apply(4, np.ones(3), {})
    again = ck.apply(4, np.ones(3), {}).apply(2, np.ones(3), {})
    assert again.step == 1 and np.array_equal(again.state, np.ones(3))
    aborted = ck.apply(5, None, {"ok": False})
    assert aborted.step == 1 and aborted.last_round_id == 5 and aborted.applied_round_id == 4


def test_torn_or_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resume(path)
    write_atomic(path, Checkpoint.fresh(10))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError):
        resume(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(CheckpointError):
        resume(path)


def test_round_start_round_trip() -> None:
    state = np.arange(4, dtype=np.float64)
    start = RoundStart(round_id=3, step=2, first_stage=1,
                       config={"protocol": "secagg+", "n": 4}, dim=4, clients=(1, 2, 5, 9),
                       verify_keys=None, state=state)
    head, back = parse_control(start.encode())
    assert head["type"] == "start" and back is not None
    assert back.clients == (1, 2, 5, 9) and np.array_equal(back.state, state)
    ctx = back.context()
    assert ctx.round_id == 3 and ctx.dim == 4


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00\x09{}", b"\x00\x00\x00\x02[]",
                                 b"\x00\x00\x00\x02{}", b"\xff\xff\xff\xff{}"])
def test_malformed_control_is_an_envelope_error(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_control(raw)


def test_control_and_limits() -> None:
    head, start = parse_control(control_message("bye"))
    assert head == {"type": "bye"} and start is None
    limits = limits_for(8, 1000)
    assert CONTROL in limits.stage_limits and len(limits.stage_limits) == len(ServerStage) + 1
    assert synthetic_update(1, 2, 3).shape == (3,)


def test_cli_refuses_bad_sizes() -> None:
    assert main(["client", "--id", "1", "--n", "0", "--insecure"]) == 2


def test_round_start_without_state_carries_the_ckks_fingerprint() -> None:
    start = RoundStart(round_id=4, step=1, first_stage=3, config={"protocol": "ckks", "n": 3},
                       dim=5, clients=(1, 2, 3), verify_keys=None, state=None,
                       ckks_fingerprint=bytes(range(32)))
    head, back = parse_control(start.encode())
    assert head["state"] is False and back is not None
    assert back.state is None and back.ckks_fingerprint == bytes(range(32))
    assert back.context().ckks_fingerprint == bytes(range(32))


def test_round_start_state_as_float32_halves_the_bytes() -> None:
    state = np.linspace(-1, 1, 100)
    kw: dict[str, Any] = dict(round_id=2, step=1, first_stage=1, config={"protocol": "plain",
                              "n": 2}, dim=100, clients=(1, 2), verify_keys=None)
    wide = RoundStart(**kw, state=state).encode()
    narrow = RoundStart(**kw, state=state, state_float32=True).encode()
    assert len(wide) - len(narrow) >= 400 - 20
    _, back = parse_control(narrow)
    assert back is not None and back.state_float32 and back.state is not None
    assert np.array_equal(back.state, state.astype(np.float32).astype(np.float64))
    with pytest.raises(EnvelopeError):
        parse_control(narrow[:-4])

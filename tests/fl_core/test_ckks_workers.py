"""The CKKS server's add in worker processes (:mod:`secagg.fl_core.runtime.ckks_workers`): real
TenSEAL, real spawned processes, vectors of a few chunks.

Exactly the in-process sum (bytes and decryption) with two workers; a slice one worker refuses
is added by none; a killed or hung worker loses the round at once (or after ``wait_s``), never
hangs, and the pool replaces it for the next round; ``secagg run --server-workers 2`` completes
rounds whose sums every client decrypts and checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secagg import ckks
from secagg.ckks_sum import CkksSum
from secagg.errors import CkksError
from secagg.fl_core.runtime.ckks_workers import CkksWorkerError, WorkerPool, summer_for
from secagg.protocols.ckks_round import CkksServer
from secagg.protocols.errors import RemoteProtocolError
from secagg.protocols.messages import CkksInput
from secagg.protocols.transitions import ServerStage
from tests.protocols.ckks_helpers import CkksDriver, ckks_config

COUNT = 10_000  # 3 chunks of 4096 values: workers get 1 and 2 positions
N = 4


Setup = tuple[ckks.SlotLayout, ckks.CkksSecretContext, list[Any], list[list[bytes]]]


@pytest.fixture(scope="module")
def setup() -> Setup:
    layout = ckks_config(n=N).ckks_layout
    assert layout is not None
    key = ckks.CkksSecretContext.generate(layout.preset)
    gen = np.random.default_rng(7)
    xs = [gen.integers(-1000, 1000, COUNT) for _ in range(N)]
    return layout, key, xs, [ckks.encrypt_ints(key, x, layout, seeded=True) for x in xs]


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    with WorkerPool(2, wait_s=60.0) as p:
        yield p


def _pid(p: WorkerPool, i: int) -> int:
    pid = p.pids[i]
    assert pid is not None
    return pid


def _in_process(setup: Setup, uploads: list[list[bytes]]) -> list[bytes]:
    layout, key, _, _ = setup
    acc = CkksSum(key.public_context(), layout, count=COUNT)
    for up in uploads:
        acc.add(up)
    return acc.result()


def test_prepare_then_commit_is_add_and_commits_once(setup: Setup) -> None:
    layout, key, _, uploads = setup
    acc = CkksSum(key.public_context(), layout, count=COUNT)
    other = CkksSum(key.public_context(), layout, count=COUNT)
    loaded = acc.prepare(uploads[0])
    assert acc.terms == 0  # prepared, not added
    with pytest.raises(ValueError, match="another sum"):
        other.commit(loaded)
    acc.commit(loaded)
    with pytest.raises(ValueError, match="already added"):
        acc.commit(loaded)
    with pytest.raises(TypeError):
        acc.commit(uploads[1])  # type: ignore[arg-type]
    acc.add(uploads[1])
    assert acc.terms == 2 and acc.result() == _in_process(setup, uploads[:2])


def test_two_workers_sum_exactly_as_one_process(setup: Setup, pool: WorkerPool) -> None:
    layout, key, xs, uploads = setup
    acc = pool(key.public_context(), layout, count=COUNT)
    for up in uploads:
        acc.add(up)
    out = acc.result()
    assert acc.terms == N and out == _in_process(setup, uploads)
    got = ckks.decrypt_ints(key, out, count=COUNT, layout=layout, n=N)
    assert np.array_equal(got, np.sum(xs, axis=0))
    stats = pool.last_stats()
    assert stats is not None and stats["workers"] == 2 and stats["failure"] is None


def test_a_slice_one_worker_refuses_is_added_by_none(setup: Setup, pool: WorkerPool) -> None:
    layout, key, xs, uploads = setup
    other = ckks.CkksSecretContext.generate(layout.preset)
    stranger = ckks.encrypt_ints(other, xs[0], layout, seeded=True)
    acc = pool(key.public_context(), layout, count=COUNT)
    acc.add(uploads[0])
    with pytest.raises(CkksError, match="another context"):
        acc.add([*uploads[1][:-1], stranger[-1]])  # only the last worker's slice is bad
    with pytest.raises(CkksError, match="expected 3 ciphertext chunks"):
        acc.add(uploads[1][:2])
    with pytest.raises(TypeError):
        acc.add(b"not a list")  # type: ignore[arg-type]
    acc.add(uploads[1])
    assert acc.terms == 2 and acc.result() == _in_process(setup, uploads[:2])


def test_server_adds_through_the_pool(pool: WorkerPool) -> None:
    cfg = ckks_config(n=N)
    want = CkksDriver(cfg, dim=COUNT)
    want.run()
    got = CkksDriver(cfg, dim=COUNT)
    got.server = CkksServer(got.ctx, public=got.keys.public, summer=pool)
    got.run()
    for cid, c in got.clients.items():
        assert np.array_equal(getattr(c, "result").values,
                              getattr(want.clients[cid], "result").values)


def test_killed_worker_loses_the_round_at_once_and_is_replaced(setup: Setup) -> None:
    layout, key, _, uploads = setup
    with WorkerPool(2, wait_s=60.0) as p:
        acc = p(key.public_context(), layout, count=COUNT)
        acc.add(uploads[0])
        os.kill(_pid(p, 1), signal.SIGKILL)
        t0 = time.monotonic()
        acc.add(uploads[1])  # the round is lost: no hang, no blame on the sender
        acc.add(uploads[2])
        with pytest.raises(CkksWorkerError, match="exited"):
            acc.result()
        assert time.monotonic() - t0 < 10.0  # far below wait_s
        acc = p(key.public_context(), layout, count=COUNT)  # replaces the workers first
        for up in uploads:
            acc.add(up)
        assert acc.result() == _in_process(setup, uploads) and p.replaced == 2


def test_hung_worker_is_given_up_after_wait_s(setup: Setup) -> None:
    layout, key, _, uploads = setup
    with WorkerPool(2, wait_s=2.0) as p:
        acc = p(key.public_context(), layout, count=COUNT)
        acc.add(uploads[0])
        os.kill(_pid(p, 0), signal.SIGSTOP)
        t0 = time.monotonic()
        acc.add(uploads[1])
        with pytest.raises(CkksWorkerError, match="did not answer"):
            acc.result()
        assert time.monotonic() - t0 < 2.0 + 5.0


def test_server_aborts_cleanly_when_a_worker_dies() -> None:
    cfg = ckks_config(n=N)
    with WorkerPool(2, wait_s=60.0) as p:
        d = CkksDriver(cfg, dim=COUNT)
        d.server = CkksServer(d.ctx, public=d.keys.public, summer=p)
        d.start(skip=[3])
        os.kill(_pid(p, 0), signal.SIGKILL)
        d._up(3, d.clients[3].start(d.xs[3]))  # accepted: the sender is not blamed
        assert not d.server.rejected
        with pytest.raises(CkksWorkerError):
            d.close()
        assert d.server.stage is ServerStage.ABORTED


@pytest.mark.parametrize("limits", [{"max_rounds": 1}, {"max_rss_bytes": 1}])
def test_workers_are_replaced_at_the_end_of_their_lifetime(setup: Setup,
                                                            limits: dict[str, int]) -> None:
    layout, key, _, uploads = setup
    with WorkerPool(2, wait_s=60.0, **limits) as p:
        first = list(p.pids)
        for _ in range(2):
            acc = p(key.public_context(), layout, count=COUNT)
            for up in uploads:
                acc.add(up)
            assert acc.result() == _in_process(setup, uploads)
        assert p.replaced == 2 and set(p.pids).isdisjoint(first)


def test_summer_for_refuses_workers_outside_ckks() -> None:
    with pytest.raises(ValueError, match="--server-workers"), summer_for("secagg+", 2,
                                                                          wait_s=1.0):
        pass
    with summer_for("secagg+", 1, wait_s=1.0) as s:
        assert s is None


def test_refused_upload_still_blames_the_sender(setup: Setup, pool: WorkerPool) -> None:
    cfg = ckks_config(n=N)
    d = CkksDriver(cfg, dim=COUNT)
    d.server = CkksServer(d.ctx, public=d.keys.public, summer=pool)
    msg = d.clients[0].start(d.xs[0])[0]
    assert isinstance(msg, CkksInput)
    bad = CkksInput(msg.round_id, msg.sender, (*msg.chunks[:-1], msg.chunks[0]), msg.signature)
    with pytest.raises(RemoteProtocolError, match="ciphertext refused"):
        d.server.receive(0, bad)
    assert d.server.barred == {0}


@pytest.mark.slow
def test_secagg_run_with_two_server_workers(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "secagg.fl_core.cli", "run", "--protocol", "ckks", "--n", "3",
           "--dim", "9000", "--rounds", "2", "--server-workers", "2", "--deadline", "20",
           "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rounds = json.loads((run_dir / "run_summary.json").read_text())["rounds"]
    assert [r["ok"] for r in rounds] == [True, True]
    for r in rounds:
        assert r["survivors"] == [1, 2, 3]
        assert r["server_add"]["workers"] == 2 and r["server_add"]["terms"] == 3
        assert r["server_add"]["failure"] is None
    # each client decrypted both sums and checked their exact integer decoding
    for cid in (1, 2, 3):
        assert f"secagg client {cid}: 2 rounds completed" in proc.stderr

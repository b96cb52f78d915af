"""``secagg bench ckks``: the two-process server add sums exactly what one process does."""

from __future__ import annotations

import numpy as np

from benchmarks.ckks_bench import _add_two_processes, _halves, _sum_slices
from secagg import ckks
from secagg.protocols import SecAggConfig


def test_halves_cover_every_position_once() -> None:
    assert _halves(5, 2) == [range(0, 2), range(2, 5)]
    assert _halves(1, 2) == [range(0, 1)]
    for total in range(1, 9):
        cut = _halves(total, 2)
        assert [i for r in cut for i in r] == list(range(total))


def test_two_worker_processes_sum_like_one() -> None:
    cfg = SecAggConfig(protocol="ckks", n=3)
    lay = cfg.ckks_layout
    assert lay is not None
    ctx = ckks.CkksSecretContext.generate(lay.preset)
    pub = ctx.public_context()
    count = lay.values_per_ciphertext * 2 + 7  # three chunks: the halves are 1 and 2 long
    gen = np.random.default_rng(0)
    half = 2 ** (lay.value_bits - 1)
    xs = [gen.integers(-half, half, count) for _ in range(3)]
    uploads = [ckks.encrypt_ints(ctx, x, lay) for x in xs]
    one = _sum_slices(pub, lay, count, range(len(uploads[0])), uploads)
    two, t = _add_two_processes(pub, lay, count, uploads, reps=1)
    want = xs[0] + xs[1] + xs[2]
    for total in (one, two):
        got = ckks.decrypt_ints(ctx, total, count=count, layout=lay, n=3)
        np.testing.assert_array_equal(got, want)
    assert t["add_2proc"] > 0 and t["scatter_2proc"] > 0

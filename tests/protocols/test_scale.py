"""One round at the issue's scale: 1,000 clients x 10^5 values in one process."""

from __future__ import annotations

import time

import numpy as np
import pytest

from secagg.protocols import SecAggConfig, run_round
from tests.protocols.helpers import bound


@pytest.mark.slow
def test_thousand_clients_hundred_thousand_values() -> None:
    n, dim = 1000, 100_000
    cfg = SecAggConfig(protocol="secagg+", n=n)
    # Distinct inputs, float32 to keep the inputs themselves at 400 MB.
    levels = np.linspace(-1.0, 1.0, 7, dtype=np.float32)
    xs = {i: np.full(dim, levels[i % 7], dtype=np.float32) for i in range(n)}
    xs[0] = np.linspace(-1.0, 1.0, dim, dtype=np.float32)
    dropped = set(range(5, n, 50))  # 2% drop after sharing keys: their masks get recovered
    t0 = time.perf_counter()
    r = run_round(cfg, xs, drop={"masked_input": dropped})
    wall = time.perf_counter() - t0
    assert r.included == tuple(i for i in range(n) if i not in dropped)
    expected = sum(xs[i].astype(np.float64) for i in r.included)
    assert np.max(np.abs(r.aggregate - expected)) <= bound(cfg, len(r.included))
    assert r.bytes_up_per_client <= dim * cfg.bits / 8 + 20_000
    print(f"\n1000 x 1e5 secagg+ (k={cfg.k}, t={cfg.threshold}, bits={cfg.bits}): "
          f"wall {wall:.1f} s, server {r.server_s:.2f} s, client mean {r.client_s_mean:.3f} s")

"""DpConfig validation, the dp-accounting accountant against known answers, calibration."""

from __future__ import annotations

import json
import math

import dp_accounting  # type: ignore[import-untyped]
import pytest

from secagg.fl_core.dp import (
    DpConfig,
    DpConfigError,
    Placement,
    PrivacyAccountant,
    Unit,
    calibrate_noise_multiplier,
    client_level_warning,
)

GOOD: dict[str, object] = dict(
    unit="record",
    placement="distributed",
    clip=1.0,
    noise_multiplier=1.0,
    delta=1e-5,
    sample_rate=0.01,
    threshold=3,
)


def test_config_accepts_strings_and_computes_share_std() -> None:
    cfg = DpConfig(**GOOD)  # type: ignore[arg-type]
    assert cfg.unit is Unit.RECORD and cfg.placement is Placement.DISTRIBUTED
    assert cfg.share_std() == pytest.approx(1 / math.sqrt(3))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("clip", 0.0),
        ("clip", -1.0),
        ("clip", float("inf")),
        ("noise_multiplier", 0.0),
        ("delta", 0.0),
        ("delta", 1.0),
        ("sample_rate", 0.0),
        ("sample_rate", 1.5),
        ("threshold", 0),
        ("threshold", 2.0),
        ("grid_scale", 0),
        ("grid_scale", 60),
        ("epsilon_budget", -1.0),
        ("unit", "person"),
        ("placement", "cloud"),
        ("clip", "1"),
    ],
)
def test_config_rejects_nonsense(field: str, value: object) -> None:
    with pytest.raises(DpConfigError, match=field if field not in ("unit", "placement") else None):
        DpConfig(**{**GOOD, field: value})  # type: ignore[arg-type]
    assert issubclass(DpConfigError, ValueError)


def test_abadi_mnist_known_answer() -> None:
    # DP-SGD on MNIST (Abadi et al. 2016 setting, TF Privacy / Opacus tutorial): q=256/60000,
    # sigma=1.1, 60 epochs, delta=1e-5 -> epsilon ~3 with the classic RDP->(eps,delta)
    # conversion; dp-accounting 0.6 uses a tighter conversion and gives 2.60.
    q = 256 / 60000
    steps = int(60 / q)
    acc = PrivacyAccountant(noise_multiplier=1.1, sample_rate=q, delta=1e-5)
    acc.step(steps)
    eps = acc.epsilon()
    assert 2.3 < eps <= 3.05
    assert eps == pytest.approx(2.597, abs=0.05)
    pld = PrivacyAccountant(noise_multiplier=1.1, sample_rate=q, delta=1e-5, kind="pld")
    assert pld.epsilon(steps) < eps  # PLD is tighter than RDP, not looser


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.0])
def test_unsampled_gaussian_between_exact_and_zcdp_bound(sigma: float) -> None:
    delta = 1e-5
    acc = PrivacyAccountant(noise_multiplier=sigma, sample_rate=1.0, delta=delta)
    eps = acc.epsilon(1)
    rho = 1 / (2 * sigma**2)
    assert eps <= rho + 2 * math.sqrt(rho * math.log(1 / delta))
    exact = dp_accounting.get_epsilon_gaussian(sigma, delta)  # Balle-Wang analytic Gaussian
    assert exact <= eps + 1e-9
    # k unsampled steps compose like one step with sigma / sqrt(k)
    assert acc.epsilon(4) == pytest.approx(
        PrivacyAccountant(noise_multiplier=sigma / 2, sample_rate=1.0, delta=delta).epsilon(1),
        rel=1e-6,
    )


def test_calibration_round_trip() -> None:
    q, steps, target = 0.01, 500, 2.0
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps
    )
    got = PrivacyAccountant(noise_multiplier=sigma, sample_rate=q, delta=1e-5).epsilon(steps)
    assert target * 0.99 <= got <= target
    worse = PrivacyAccountant(noise_multiplier=sigma * 0.98, sample_rate=q, delta=1e-5)
    assert worse.epsilon(steps) > target
    full = calibrate_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=1.0, steps=5)
    eps_full = PrivacyAccountant(noise_multiplier=full, sample_rate=1.0, delta=1e-5).epsilon(5)
    assert 8.0 * 0.99 <= eps_full <= 8.0
    # RDP's finite set of orders floors epsilon near 0.22 at delta=1e-100 whatever the noise
    with pytest.raises(DpConfigError, match="unreachable"):
        calibrate_noise_multiplier(target_epsilon=0.1, delta=1e-100, sample_rate=1.0, steps=1000)
    with pytest.raises(DpConfigError):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=1.0, steps=0)


def test_state_dict_round_trip_and_mismatch() -> None:
    acc = PrivacyAccountant(noise_multiplier=1.2, sample_rate=0.05, delta=1e-6)
    acc.step(7)
    state = json.loads(json.dumps(acc.state_dict()))
    fresh = PrivacyAccountant(noise_multiplier=1.2, sample_rate=0.05, delta=1e-6)
    fresh.load_state_dict(state)
    assert fresh.steps == 7 and fresh.epsilon() == acc.epsilon() > 0
    other = PrivacyAccountant(noise_multiplier=1.0, sample_rate=0.05, delta=1e-6)
    with pytest.raises(DpConfigError, match="noise_multiplier"):
        other.load_state_dict(state)
    with pytest.raises(DpConfigError, match="steps"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "steps"})


def test_budget_stops_training() -> None:
    budget = 1.5
    acc = PrivacyAccountant(noise_multiplier=2.0, sample_rate=0.1, delta=1e-5)
    assert acc.epsilon() == 0.0
    while not acc.would_exceed(budget):
        acc.step()
        assert acc.steps < 10_000
    assert acc.steps > 1
    assert 0 < acc.epsilon() <= budget < acc.epsilon(acc.steps + 1)


def test_client_level_warning() -> None:
    msg = client_level_warning(8, 1.0)
    assert msg is not None and "8 parties" in msg and "record-level" in msg
    assert client_level_warning(1000, 0.1) is None
    with pytest.raises(ValueError):
        client_level_warning(0, 1.0)


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.1, 256 / 60000, 3000), (0.7, 1.0, 9)])
def test_fast_rdp_path_equals_dp_accounting_composition(sigma: float, q: float, steps: int) -> None:
    ref = dp_accounting.rdp.RdpAccountant()
    inner = dp_accounting.GaussianDpEvent(sigma)
    ref.compose(inner if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, inner), steps)
    acc = PrivacyAccountant(noise_multiplier=sigma, sample_rate=q, delta=1e-5)
    assert acc.epsilon(steps) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)

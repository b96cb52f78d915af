"""RDP of a Poisson-subsampled mechanism known only through its zCDP, and RDP -> (eps, delta).

The distributed discrete Gaussian (a sum of discrete Gaussian shares) is not a Gaussian
mechanism, so the subsampled-Gaussian RDP formula (Mironov, Talwar, Zhang 2019, what
``dp-accounting``'s ``PoissonSampledDpEvent(GaussianDpEvent)`` computes) does not cover it. What
is proven for it:

1. Unsampled: Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
   Learning with Secure Aggregation" (ICML 2021, KLS21), Theorem 1: the sum of ``n`` discrete
   Gaussian shares with integer sensitivity ``Delta`` is ``eps^2/2``-concentrated DP (zCDP),
   i.e. its RDP at EVERY order ``alpha > 1`` is at most ``alpha * rho`` with ``rho = eps^2/2``
   (:func:`secagg.fl_core.dp.mechanism.effective_noise_multiplier` returns ``1/eps``).
2. Poisson subsampling of ANY mechanism with RDP curve ``e(l)``: Zhu and Wang, "Poisson
   Subsampled Renyi Differential Privacy" (ICML 2019, ZW19), Theorem 6 (general upper bound,
   integer ``alpha >= 2``)::

       (alpha-1) e_sub(alpha) <= log[ (1-q)^(alpha-1) (alpha q - q + 1)
                                      + C(alpha,2) q^2 (1-q)^(alpha-2) exp(e(2))
                                      + 3 sum_{l=3}^{alpha} C(alpha,l) q^l (1-q)^(alpha-l)
                                            exp((l-1) e(l)) ]

   This is the bound the KLS21 authors' own accounting uses for their mechanism
   (google-research/federated, ``distributed_dp/accounting_utils.py``:
   ``_compute_rdp_subsampled(upper_bound=True)`` inside ``compute_rdp_dgaussian``, which also
   takes the minimum with the unsampled curve, as we do). Computed here in log space
   (log-binomials by cumulative sums, a log-sum-exp), only at integer orders.
3. RDP to ``(eps, delta)``: Canonne, Kamath, Steinke (NeurIPS 2020, CKS20), Proposition 12 in
   arXiv v4 (also Asoodeh et al. 2020): ``eps = r + log1p(-1/a) - log(delta a)/(a-1)``, through
   ``dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon``, the conversion dp-accounting's
   own RDP accountant uses.
"""

from __future__ import annotations

import functools
import math

import dp_accounting  # type: ignore[import-untyped]
import numpy as np
from numpy.typing import NDArray

__all__ = ["ZCDP_ORDERS", "epsilon_from_rdp", "zcdp_subsampled_rdp", "zw19_log_moment"]

#: Integer orders only: ZW19's general bound is stated for integer alpha >= 2.
ZCDP_ORDERS: tuple[int, ...] = (*range(2, 257), 320, 384, 448, 512, 768, 1024)


def _log_binomials(alpha: int) -> NDArray[np.float64]:
    """``log C(alpha, l)`` for ``l = 0..alpha`` (cumulative sums of ``log((alpha-j+1)/j)``)."""
    j = np.arange(1, alpha + 1, dtype=np.float64)
    steps = np.log(alpha - j + 1.0) - np.log(j)
    return np.concatenate(([0.0], np.cumsum(steps)))


def zw19_log_moment(alpha: int, q: float, rho: float) -> float:
    """``(alpha - 1)`` times the ZW19 Thm. 6 bound on the RDP at order ``alpha`` of a Poisson
    subsample (rate ``q``, ``0 < q < 1``) fed to a ``rho``-zCDP mechanism (``e(l) = l rho``).

    Raises:
        ValueError: ``alpha`` not an int >= 2, ``q`` outside (0, 1) or ``rho`` negative.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int) or alpha < 2:
        raise ValueError(f"alpha must be an int >= 2, got {alpha!r}")
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    if not (math.isfinite(rho) and rho >= 0):
        raise ValueError(f"rho must be finite and >= 0, got {rho!r}")
    log_q, log_1mq = math.log(q), math.log1p(-q)
    log_c = _log_binomials(alpha)
    first = (alpha - 1) * log_1mq + math.log1p((alpha - 1) * q)
    second = log_c[2] + 2 * log_q + (alpha - 2) * log_1mq + 2 * rho
    terms = [first, second]
    if alpha >= 3:
        l_ = np.arange(3, alpha + 1, dtype=np.float64)
        rest = (math.log(3.0) + log_c[3:] + l_ * log_q + (alpha - l_) * log_1mq
                + (l_ - 1.0) * l_ * rho)
        terms.extend(rest.tolist())
    arr = np.asarray(terms)
    top = float(np.max(arr))
    return top + math.log(float(np.sum(np.exp(arr - top))))


@functools.lru_cache(maxsize=512)
def zcdp_subsampled_rdp(q: float, rho: float) -> tuple[float, ...]:
    """RDP at :data:`ZCDP_ORDERS` of one Poisson(``q``)-subsampled step of a ``rho``-zCDP
    mechanism: the minimum of ZW19 Thm. 6 and the unsampled ``alpha * rho`` (both valid).

    Raises:
        ValueError: ``q`` outside (0, 1] or ``rho`` negative.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    out = []
    for alpha in ZCDP_ORDERS:
        unsampled = alpha * rho
        if q < 1.0:
            out.append(min(zw19_log_moment(alpha, q, rho) / (alpha - 1), unsampled))
        else:
            out.append(unsampled)
    return tuple(out)


def epsilon_from_rdp(orders: tuple[int, ...] | NDArray[np.float64],
                     rdp: NDArray[np.float64], delta: float) -> tuple[float, float]:
    """(epsilon, optimal order) at ``delta`` by CKS20 Prop. 12, minimised over ``orders``."""
    eps, order = dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(
        list(orders), list(rdp), delta)
    return float(eps), float(order)

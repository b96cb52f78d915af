"""Graph degree ``k`` and threshold ``t`` for SecAgg+ from n, dropout and corruption rates.

The rule follows the analysis of Bell, Bonawitz, Gascón, Lepoint and Raykova, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020 (Sections 3 and 4): a
sparse k-regular graph is as good as the complete graph of Bonawitz et al. (CCS 2017) as long
as, except with probability ``2^-sigma`` (security) or ``2^-eta`` (correctness),

1. *connectivity*: the graph stays connected once the corrupted and the dropped clients are
   removed (otherwise the server learns the partial sum of a component);
2. *no split*: for every honest client ``i`` with ``C_i`` corrupted neighbours,
   ``2t > (k + 1) + C_i``. The ``k + 1`` holders of its shares (neighbours and itself) can
   then never hand the server ``t`` shares of both its self-mask seed and its mask key, since
   each honest holder reveals at most one of them and corrupted holders reveal both;
3. *correctness*: every client keeps at least ``t`` surviving neighbours, so each secret the
   server needs can be reconstructed.

We instantiate the paper's random graph with a Harary graph (each node joined to the ``k/2``
nearest positions on each side of a cycle) laid out on a uniformly random permutation, so a
node's neighbourhood is a uniform ``k``-subset of the others. With ``C = ceil(gamma n)``
corrupted and ``D = ceil(delta n)`` dropped clients, ``C_i`` and ``D_i`` are hypergeometric,
and we bound each event exactly, with a union bound over the ``n`` clients:

- (2) ``P[C_i >= 2t - k - 1] <= 2^-sigma / n``,
- (3) ``P[k - D_i < t] <= 2^-eta / n`` (a dropped client's own share is lost too),
- (1) the cycle power ``C_n^{k/2}`` minus a set ``B`` falls apart only if ``B`` holds two
  disjoint runs of ``k/2`` consecutive positions: ``P <= C(n, 2) P[2 * k/2 given positions all
  in B] <= 2^-sigma`` with ``|B| = C + D``.

:func:`graph_parameters` returns the smallest even ``k`` (or the complete graph ``k = n - 1``)
meeting all three and the smallest ``t`` meeting (2). Where no ``k`` meets (3) (small ``n``,
high rates) it falls back to the complete graph with the security threshold: security is never
traded for dropout tolerance. A user-fixed ``k`` or ``t`` is checked against (1) and (2); the
dropout tolerance (3) of a user's choice is the user's call.
"""

from __future__ import annotations

import functools
import math

from secagg.protocols.errors import ConfigError

__all__ = ["cohort_choice_risk", "corrupt_count", "graph_parameters", "min_threshold",
           "security_threshold"]


def corrupt_count(n: int, corruption_rate: float, population: int | None = None) -> int:
    """The corrupted clients a cohort of ``n`` is sized for: ``ceil(rate * n)``, or, when the
    cohort is picked out of a ``population`` of ``N`` allowlisted clients by a server that may
    control ``ceil(rate * N)`` of them, all of those (it can put every one of its sybils into
    the cohort it picks), at most ``n - 1``."""
    base = n if population is None else max(n, population)
    return min(math.ceil(corruption_rate * base), n - 1)


def min_threshold(k: int) -> int:
    """The least threshold for ``k`` neighbours with no corruption: ``2t > k + 1``."""
    return (k + 1) // 2 + 1


def _log_comb(n: int, r: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)


def _upper_quantile(pop: int, succ: int, draws: int, eps: float) -> int:
    """The least ``c`` with ``P[X >= c] <= eps`` for ``X ~ Hypergeometric(pop, succ, draws)``."""
    succ = min(succ, pop)
    lo, hi = max(0, draws - (pop - succ)), min(succ, draws)
    log_total = _log_comb(pop, draws)
    tail = 0.0
    for x in range(hi, lo - 1, -1):
        tail += math.exp(_log_comb(succ, x) + _log_comb(pop - succ, draws - x) - log_total)
        if tail > eps:
            return x + 1
    return lo


def _connected(n: int, k: int, bad: int, sigma: int) -> bool:
    """Condition (1) for the Harary graph of degree ``k`` on ``n`` nodes."""
    if k >= n - 1:
        return True
    run = 2 * (k // 2)
    if run > bad:
        return True
    log_p = sum(math.log(bad - i) - math.log(n - i) for i in range(run))
    return math.log(n * (n - 1) / 2) + log_p <= -sigma * math.log(2)


def _tail(pop: int, succ: int, draws: int, at_least: int) -> float:
    """``P[X >= at_least]`` for ``X ~ Hypergeometric(pop, succ, draws)``, summed exactly."""
    succ = min(succ, pop)
    log_total = _log_comb(pop, draws)
    lo = max(at_least, 0, draws - (pop - succ))
    return sum(math.exp(_log_comb(succ, x) + _log_comb(pop - succ, draws - x) - log_total)
               for x in range(lo, min(succ, draws) + 1))


def cohort_choice_risk(n: int, k: int, t: int, corrupt: int) -> tuple[float, float, float]:
    """What a server that packs ``corrupt`` sybils into a cohort of ``n`` gets per round, when
    the graph is uniformly random (the committed nonces: :mod:`secagg.protocols.graph`).

    Returns ``(t_or_more, split, any_victim)``: for one honest victim, the probability that
    ``t`` or more of its ``k`` neighbours are sybils (they rebuild both its secrets alone),
    that condition 2 breaks (``C >= 2t - k - 1``: honest holders can be split into revealing
    both), and the union bound of the latter over the ``n - corrupt`` honest clients (capped
    at 1). With ``k = n - 1`` every honest client has exactly ``corrupt`` sybil neighbours.
    """
    if not 0 <= corrupt < n:
        raise ValueError(f"corrupt must be in [0, n), got {corrupt}")
    t_or_more = _tail(n - 1, corrupt, k, t)
    split = _tail(n - 1, corrupt, k, 2 * t - k - 1)
    return t_or_more, split, min(1.0, (n - corrupt) * split)


def security_threshold(n: int, k: int, corrupt: int, sigma: int) -> int:
    """The least ``t`` meeting condition (2) for degree ``k`` with ``corrupt`` bad clients."""
    c_star = _upper_quantile(n - 1, corrupt, k, 2.0**-sigma / n)
    return max(min_threshold(k), math.ceil((k + 1 + c_star) / 2))


def _correct(n: int, k: int, t: int, dropped: int, eta: int) -> bool:
    """Condition (3): ``P[D_i > k - t] <= 2^-eta / n``."""
    return _upper_quantile(n - 1, dropped, k, 2.0**-eta / n) <= k - t + 1


def _candidates(n: int) -> list[int]:
    return [*range(2, n - 1, 2), n - 1]


@functools.lru_cache(maxsize=256)
def graph_parameters(
    n: int,
    *,
    corruption_rate: float,
    dropout_rate: float,
    sigma: int,
    eta: int,
    k: int | None = None,
    t: int | None = None,
    population: int | None = None,
) -> tuple[int, int]:
    """Return ``(k, t)`` for ``n`` clients, deriving whichever of ``k`` and ``t`` is None;
    the corrupted count is :func:`corrupt_count` (``population``: see there).

    Raises:
        ConfigError: a given ``k`` is neither even in ``[2, n - 2]`` nor ``n - 1``; a given
            ``t`` is outside ``[t_security(k), k + 1]``; a given ``k`` leaves the graph
            possibly disconnected; or even the complete graph cannot meet (2).
    """
    corrupt = corrupt_count(n, corruption_rate, population)
    dropped = math.ceil(dropout_rate * n)
    bad = min(n, corrupt + dropped)
    if k is not None:
        if k != n - 1 and (k % 2 or not 2 <= k <= n - 2):
            raise ConfigError(f"k must be even in [2, n-2] (Harary graph) or n-1, got k={k}")
        if not _connected(n, k, bad, sigma):
            raise ConfigError(
                f"k={k} may leave the honest survivors disconnected for n={n} "
                f"(corruption_rate + dropout_rate too high): raise k"
            )
        t_sec = security_threshold(n, k, corrupt, sigma)
        if t is None:
            t = t_sec
        if not t_sec <= t <= k + 1:
            raise ConfigError(
                f"threshold must be in [{t_sec}, {k + 1}] for k={k} (2t > k + 1 + corrupted "
                f"neighbours, at most k + 1 share holders), got {t}"
            )
        return k, t
    for cand in _candidates(n):
        if not _connected(n, cand, bad, sigma):
            continue
        t_sec = security_threshold(n, cand, corrupt, sigma)
        t_c = t_sec if t is None else t
        if t_sec <= t_c <= cand + 1 and _correct(n, cand, t_c, dropped, eta):
            return cand, t_c
    # No degree meets the dropout target (small n, high rates): keep security, fall back to
    # the complete graph, and tolerate the dropouts that the threshold leaves room for.
    return graph_parameters(
        n, corruption_rate=corruption_rate, dropout_rate=dropout_rate, sigma=sigma, eta=eta,
        k=n - 1, t=t, population=population,
    )

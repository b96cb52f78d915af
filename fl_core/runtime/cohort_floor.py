"""The cohort floor: the smallest round a server may run and a client takes part in.

A server that may shrink rounds (``--min-clients M``, a client's ``min_cohort``) picks who is in
each of them, so it can keep its sybils in the smallest cohort the parties accept. The floor is
the least ``M`` such that every round size ``m`` in ``[M, n]`` whose config validates keeps what
the full cohort ``n`` promises; each rule below names the attack it stops. ``c`` is the number of
corrupted clients the full cohort's config is sized for (:attr:`SecAggConfig.corrupt`,
``ceil(corruption_rate * n)``, or counted against the population when the config has one), and
``t_m`` the threshold the config rule gives a round of ``m``.

Secure aggregation (SecAgg, SecAgg+, ``ckks+mask``), with or without DP:

1. *The round is sized for the same sybils.* The config of ``m`` must assume at least ``c``
   corrupted clients: the server can put all of them into a smaller cohort.
2. *At least two honest inputs in any sum that can be unmasked.* The server may report every
   member but ``t_m`` as dropped, and subtract what its ``c`` sybils sent; a curious member
   subtracts its own input from the sum it is shown (the global state goes to every client).
   So ``t_m >= max(c, 1) + 2``. A cohort of 2 fails this for any ``c``: the sum minus one's
   own input is the other's.

Distributed DP noise (exact release, :mod:`secagg.fl_core.dp.exact`) adds:

3. *No fewer honest noise shares than the full cohort's worst case.* After the release the
   ``s`` survivors' sum carries ``sigma^2`` (in units of ``C^2``), ``sigma^2 / s`` from each;
   the server subtracts what its ``c'`` sybils added, leaving ``sigma^2 (s - c') / s`` on the
   honest inputs, smallest at ``s = t_m``. The documented guarantee against ``c'`` colluders is
   that of multiplier ``sigma * sqrt((t_n - c') / t_n)`` (the full cohort's threshold), so every
   accepted round needs ``t_m >= t_n``; then it holds for every ``c' < t_n`` alike. Without the
   floor a {victim, sybil} round leaves ``sigma / sqrt(2)`` and no masking at all. The reported
   epsilon itself (no colluders) holds at every round size: each is calibrated.

CKKS (``ckks``) has no neighbour graph and its threshold is only the fewest uploads summed, so
only the cohort-of-two rule applies there: ``m >= 3``. The plaintext baseline promises no
secrecy: floor 1.

When ``n`` itself breaks a rule (``n = 2``, or a cohort too small for its sybils) the floor is
``n``: rounds never shrink, and the docs state what such a cohort reveals. A round size whose
config does not validate never starts, so it sets no floor.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from secagg.fl_core.errors import FlCoreError
from secagg.protocols.config import ProtocolKind, SecAggConfig
from secagg.protocols.errors import ConfigError

__all__ = ["CohortFloorError", "check_min_cohort", "cohort_floor", "distributed_dp",
           "floor_reason"]


class CohortFloorError(FlCoreError, ValueError):
    """A smallest cohort (``--min-clients``, ``min_cohort``) below the cohort floor. The
    message names the floor, the rule the next smaller round would break, and what to do."""


def distributed_dp(dp: Mapping[str, Any] | None) -> bool:
    """Whether a policy's DP part (:func:`secagg.fl_core.runtime.policy.dp_policy`) is
    distributed noise: only then does the noise rule of the floor apply."""
    return dp is not None and dp.get("placement") == "distributed"


def _config(args: Mapping[str, Any], m: int) -> SecAggConfig | None:
    try:
        return SecAggConfig(**{**args, "n": m})
    except (ConfigError, TypeError, ValueError):
        return None


def _broken_rule(cfg: SecAggConfig, full: SecAggConfig, dp: bool) -> str | None:
    """Why a round of ``cfg.n`` breaks the floor's rules (None: it keeps them)."""
    m, t, c = cfg.n, cfg.threshold, full.corrupt
    if full.protocol is ProtocolKind.CKKS:
        if m < 3:
            return (f"a CKKS round of {m}: each member decrypts the sum, and the sum minus its "
                    "own input is the other's")
        return None
    if cfg.corrupt < c:
        return (f"a round of {m} is sized for {cfg.corrupt} corrupted clients, the cohort of "
                f"{full.n} for {c}: the server picks the cohort and can keep all its sybils in "
                "the smaller one")
    if t < max(c, 1) + 2:
        return (f"a round of {m} completes with {t} inputs; with {max(c, 1)} of them the "
                f"server's (sybils, or a curious member), the sum holds {t - max(c, 1)} honest "
                "input(s): at least 2 are needed, or that input is read in the clear")
    if dp and t < full.threshold:
        return (f"a round of {m} completes with threshold {t} < "
                f"{full.threshold}, the full cohort's; with c sybils among the survivors the "
                f"honest noise is sigma*sqrt(({t}-c)/{t}), weaker than the "
                f"sigma*sqrt(({full.threshold}-c)/{full.threshold}) the guarantee states")
    return None


@functools.lru_cache(maxsize=256)
def _floor(key: str, dp: bool) -> tuple[int, str | None]:
    args = json.loads(key)
    full = SecAggConfig(**args)
    if full.protocol is ProtocolKind.PLAIN:
        return 1, None
    why = _broken_rule(full, full, dp)
    if why is not None:
        return full.n, why
    for m in range(full.n - 1, 1, -1):
        cfg = _config(args, m)
        if cfg is None:
            continue  # never starts: no floor from it
        why = _broken_rule(cfg, full, dp)
        if why is not None:
            return m + 1, why
    return 2 if full.protocol is not ProtocolKind.CKKS else min(3, full.n), None


def _key(config_args: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(config_args), sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"config_args must be JSON-like keywords: {exc}") from None


def cohort_floor(config_args: Mapping[str, Any], *, dp: bool) -> int:
    """The smallest cohort a federation of ``config_args`` (``n``: the full cohort) may run a
    round with; ``dp``: the clients add distributed DP noise (see the module docstring).

    Raises:
        ConfigError / TypeError: ``config_args`` is not a valid config.
    """
    return _floor(_key(config_args), dp)[0]


def floor_reason(config_args: Mapping[str, Any], *, dp: bool) -> str | None:
    """Why a round one smaller than :func:`cohort_floor` is refused (None: the floor is the
    protocol's own minimum).

    Raises:
        ConfigError / TypeError: ``config_args`` is not a valid config.
    """
    return _floor(_key(config_args), dp)[1]


def check_min_cohort(config_args: Mapping[str, Any], min_cohort: int | None, *, dp: bool,
                     flag: str = "--min-clients") -> int:
    """``min_cohort`` (None: ``n``, every round full) after checking it against the floor.

    Raises:
        CohortFloorError: ``min_cohort`` is below :func:`cohort_floor`; the message names the
            floor, the broken rule and ``flag``.
        ConfigError / TypeError: ``config_args`` is not a valid config.
    """
    n = int(config_args["n"])
    if min_cohort is None:
        return n
    floor, why = _floor(_key(config_args), dp)
    if min_cohort < floor:
        proto = config_args.get("protocol", "secagg+")
        raise CohortFloorError(
            f"{flag} {min_cohort} is below the cohort floor {floor} of {proto} with n={n}"
            f"{' and distributed DP noise' if dp else ''}: {why}. Use {flag} {floor} or more "
            f"(or leave it unset: every round takes all {n}); docs/parameters.md#cohort-floor")
    return min_cohort

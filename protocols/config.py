"""The one validated configuration every party of a round agrees on.

``SecAggConfig`` is the recipe layer (DESIGN part 3): it chooses every security parameter the
hazardous ``secagg`` layer leaves open, once. Anything left out is derived safely:

- ``k`` and ``threshold``: SecAgg uses the complete graph (``k = n - 1``); SecAgg+ takes the
  smallest sparse degree meeting the rule of :mod:`secagg.protocols.params` (Bell et al., CCS 2020)
  for ``dropout_rate``, ``corruption_rate``, ``sigma`` and ``eta``. The threshold is the
  least ``t`` with ``2t > k + 1 + corrupted neighbours`` (w.p. ``1 - 2^-sigma``); for SecAgg
  with ``corruption_rate = 0`` this is Bonawitz et al.'s ``floor(n/2) + 1``.
- ``bits`` and ``scale``: :class:`secagg.fixedpoint.FixedPointConfig` must accept them for
  ``n`` summands clipped to ``clip``, so the sum can never wrap. Left out, ``scale`` is 16
  fractional bits (fewer if 32 ring bits cannot hold ``n`` of them) and ``bits`` the fewest
  that hold the sum.
- CKKS default scale (``"ckks"`` only, ``scale`` and ``bits`` both left out): the largest
  scale in ``[CKKS_MIN_SCALE, 16]`` (12 to 16, capped as above) whose slot layout is as cheap
  per value as any in that range, i.e. that packs as many lanes per slot as the preset can carry
  at >= 12 fractional bits. At ``n = 20``, clip 1, two lanes of 16-bit values need 46-bit slots,
  more than the 43 exact bits exact-4096 has at that ``n``: the default is scale 14 with two
  lanes per slot (half the bytes and half the server's additions) rather than 16 with one.
  The price is precision: each value is quantised with step ``2^-scale`` (error at most
  ``2^-(scale+1)`` per value with nearest rounding: ``3.1e-5`` at 14, ``7.6e-6`` at 16), far
  below the Gaussian noise DP-SGD adds (standard deviation ``sigma * clip``, ``sigma`` around
  1, i.e. ``1e4`` times the step before averaging) and below FedAvg's client drift. An
  explicit ``scale`` is respected (so is an explicit ``bits``, which fixes the scale as for every
  protocol). ``"ckks+mask"`` keeps the generic default (16): its lanes carry uniform ring
  elements of ``bits`` bits, the width of the whole sum (at ``n = 20`` no scale >= 12 gives them
  a second lane; at ``n <= 16`` an explicit ``scale=12`` does).
- CKKS (``"ckks"``, ``"ckks+mask"``): the slot layout holds the exact sum of ``n`` values of
  :attr:`SecAggConfig.ckks_value_bits` each (one fixed-point value, or one ring element of
  ``bits`` for ``ckks+mask``); the preset is the cheapest that does
  (:func:`secagg.ckks.choose_preset`) unless ``ckks_preset`` names one. ``"ckks"`` has no graph
  (``k = 0``) and its threshold (default 1) is the fewest inputs the server may sum: every key
  holder can read every upload anyway, so it is not a secrecy parameter. ``"ckks+mask"`` takes
  ``k`` and ``threshold`` exactly as SecAgg+.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Any

from secagg.ckks_layout import SlotLayout, choose_preset
from secagg.ckks_params import PRESETS
from secagg.errors import RangeError
from secagg.fixedpoint import FixedPointConfig, Rounding
from secagg.protocols.errors import ConfigError
from secagg.protocols.params import corrupt_count, graph_parameters, security_threshold

__all__ = ["CKKS_MIN_SCALE", "DEFAULT_SCALE", "ProtocolKind", "SecAggConfig"]

DEFAULT_SCALE = 16
#: Fewest fractional bits the ``"ckks"`` default scale gives up for more lanes per slot.
CKKS_MIN_SCALE = 12
_MAX_N = 2**20


class ProtocolKind(Enum):
    """Which aggregation protocol a round runs (the strings are accepted too)."""

    PLAIN = "plain"
    SECAGG = "secagg"
    SECAGG_PLUS = "secagg+"
    CKKS = "ckks"
    CKKS_MASK = "ckks+mask"

    @property
    def is_ckks(self) -> bool:
        """True for the CKKS protocols (the server adds ciphertexts)."""
        return self in (ProtocolKind.CKKS, ProtocolKind.CKKS_MASK)

    @property
    def is_masked(self) -> bool:
        """True where clients mask with the SecAgg+ machinery (graph, shares, unmask)."""
        return self in (ProtocolKind.SECAGG, ProtocolKind.SECAGG_PLUS, ProtocolKind.CKKS_MASK)


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _float(name: str, value: Any, lo: float, hi: float, *, open_hi: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be float, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi) or (open_hi and v >= hi):
        raise ConfigError(f"{name} must be in [{lo}, {hi}{')' if open_hi else ']'}, got {value}")
    return v


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be bool, got {type(value).__name__}")
    return value


def _fixed_point(n: int, clip: float, bits: int | None, scale: int | None) -> FixedPointConfig:
    """Resolve bits and scale so that n values in [-clip, clip] can never overflow.

    Raises:
        ConfigError: no ring of at most 32 bits holds the sum at the requested precision.
    """
    def need(s: int) -> int:
        return FixedPointConfig.minimal_bits(n_max=n, clip=clip, scale=s)

    try:
        if scale is None:
            ring = 32 if bits is None else bits
            fitting = [s for s in range(0, 64) if need(s) <= ring]
            if not fitting:
                raise ConfigError(f"no scale fits {n} values of +-{clip} in {ring} ring bits")
            scale = max(fitting) if bits is not None else min(DEFAULT_SCALE, max(fitting))
        if bits is None:
            bits = max(8, need(scale))
        return FixedPointConfig(bits=bits, scale=scale, clip=clip, n_max=n)
    except (RangeError, ValueError) as exc:  # RangeError: overflow; ValueError: bits > 32
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"fixed point: {exc}") from exc


@dataclass(frozen=True, init=False)
class SecAggConfig:
    """Validated, frozen round configuration; build it with keywords only.

    Attributes (all resolved after construction):
        protocol: :class:`ProtocolKind` (``"plain"``, ``"secagg"``, ``"secagg+"`` accepted).
        n: number of clients in the round (2 or more for the secure protocols).
        threshold: Shamir threshold ``t`` (1 for plain).
        k: neighbours per client (``n - 1`` for SecAgg, 0 for plain).
        bits, scale, clip: the fixed-point ring ``Z/2^bits``, fractional bits, input range.
        active: active-adversary mode (signed keys, consistency check).
        weighted: clients send ``w * x`` and ``w``; the result is the weighted mean.
        max_weight: weights lie in ``[0, max_weight]``.
        dropout_rate, corruption_rate, sigma, eta: inputs of the SecAgg+ rule.
        population: the number of allowlisted clients the cohort is picked from (None: the
            cohort is the whole population). A server that picks cohorts can place every one
            of its ``ceil(corruption_rate * population)`` sybils in one cohort, so ``k`` and
            ``t`` are sized for that many corrupted clients (:attr:`corrupt`;
            docs/threat-model.md, "Cohort choice").
        rounding: fixed-point rounding mode.
        ckks_layout: CKKS slot layout (its ``preset`` included); ``None`` unless CKKS.
        ckks_seeded: CKKS uploads as seeded (half-size) ciphertexts; ``True`` unless CKKS.
    """

    protocol: ProtocolKind
    n: int
    threshold: int
    k: int
    bits: int
    scale: int
    clip: float
    active: bool
    weighted: bool
    max_weight: float
    dropout_rate: float
    corruption_rate: float
    sigma: int
    eta: int
    rounding: Rounding
    ckks_layout: SlotLayout | None
    ckks_seeded: bool
    population: int | None

    def __init__(
        self,
        *,
        protocol: ProtocolKind | str,
        n: int,
        threshold: int | None = None,
        k: int | None = None,
        bits: int | None = None,
        scale: int | None = None,
        clip: float = 1.0,
        active: bool = False,
        weighted: bool = False,
        max_weight: float = 1.0,
        dropout_rate: float = 0.1,
        corruption_rate: float = 0.05,
        sigma: int = 40,
        eta: int = 30,
        rounding: Rounding = Rounding.NEAREST,
        ckks_preset: str | None = None,
        ckks_seeded: bool = True,
        population: int | None = None,
    ) -> None:
        """Validate and derive every parameter left out.

        Raises:
            TypeError: a parameter has the wrong type.
            ConfigError: a value is out of range, ``k``/``threshold`` cannot be secure, or
                ``bits``/``scale`` could overflow (a ``ValueError`` too).
        """
        try:
            kind = ProtocolKind(protocol)
        except ValueError:
            raise ConfigError(f"unknown protocol {protocol!r}") from None
        n = _int("n", n, 1 if kind is ProtocolKind.PLAIN else 2, _MAX_N)
        for name, v in (("threshold", threshold), ("k", k), ("bits", bits), ("scale", scale)):
            if v is not None:
                _int(name, v, 0, _MAX_N)
        clip = _float("clip", clip, 0.0, 1e300)
        if clip <= 0:
            raise ConfigError("clip must be > 0")
        max_weight = _float("max_weight", max_weight, 0.0, 1e300)
        if max_weight <= 0:
            raise ConfigError("max_weight must be > 0")
        rates = {
            "dropout_rate": _float("dropout_rate", dropout_rate, 0.0, 1.0, open_hi=True),
            "corruption_rate": _float("corruption_rate", corruption_rate, 0.0, 0.5, open_hi=True),
        }
        sigma = _int("sigma", sigma, 1, 256)
        eta = _int("eta", eta, 1, 256)
        if not isinstance(rounding, Rounding):
            raise TypeError(f"rounding must be Rounding, got {type(rounding).__name__}")
        if population is not None:
            population = _int("population", population, n, _MAX_N)
        k, threshold = _graph(kind, n, k, threshold, rates, sigma, eta, population)
        fp = _fixed_point(n, clip, bits, scale)
        if kind is ProtocolKind.CKKS and scale is None and bits is None:
            fp = _ckks_default_fixed_point(kind, fp, ckks_preset, ckks_seeded)
        values = {
            "protocol": kind, "n": n, "threshold": threshold, "k": k, "bits": fp.bits,
            "scale": fp.scale, "clip": fp.clip, "active": _bool("active", active),
            "weighted": _bool("weighted", weighted), "max_weight": max_weight, **rates,
            "sigma": sigma, "eta": eta, "rounding": rounding,
        }
        if kind is ProtocolKind.PLAIN and values["active"]:
            raise ConfigError("the plaintext baseline has no active mode")
        values["ckks_layout"] = _ckks_layout(kind, fp, ckks_preset, ckks_seeded)
        values["ckks_seeded"] = ckks_seeded
        values["population"] = population
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def fixed_point(self) -> FixedPointConfig:
        """The fixed-point ring every client encodes into."""
        return FixedPointConfig(bits=self.bits, scale=self.scale, clip=self.clip, n_max=self.n)

    @property
    def corrupt(self) -> int:
        """Corrupted clients ``k`` and ``t`` are sized for (:func:`corrupt_count`)."""
        return corrupt_count(self.n, self.corruption_rate, self.population)

    @property
    def is_secure(self) -> bool:
        """True for every protocol but the plaintext baseline."""
        return self.protocol is not ProtocolKind.PLAIN

    @property
    def is_ckks(self) -> bool:
        """True for ``"ckks"`` and ``"ckks+mask"``."""
        return self.protocol.is_ckks

    @property
    def is_masked(self) -> bool:
        """True for the protocols that mask with the SecAgg(+) machinery."""
        return self.protocol.is_masked

    @property
    def ckks_value_bits(self) -> int:
        """Signed bits of one value the CKKS layout must hold: ``bits`` (a masked ring
        element, two's-complement lifted) for ``ckks+mask``, else the width of one clipped
        fixed-point value.

        Raises:
            ConfigError: not a CKKS protocol.
        """
        if self.ckks_layout is None:
            raise ConfigError(f"{self.protocol.value} has no CKKS layout")
        return self.ckks_layout.value_bits

    def to_bytes(self) -> bytes:
        """Canonical, injective encoding of every field (what :attr:`digest` hashes).

        The CKKS part (preset name, value bits, seeded) follows only for CKKS protocols,
        whose names say it is there; other configs encode exactly as before it existed.
        """
        proto = self.protocol.value.encode()
        parts = [
            b"secagg/config/v1", struct.pack(">B", len(proto)), proto,
            struct.pack(">IIIIId??dddIIB", self.n, self.threshold, self.k, self.bits,
                        self.scale, self.clip, self.active, self.weighted, self.max_weight,
                        self.dropout_rate, self.corruption_rate, self.sigma, self.eta,
                        list(Rounding).index(self.rounding)),
        ]
        if self.ckks_layout is not None:
            name = self.ckks_layout.preset.name.encode()
            parts += [struct.pack(">B", len(name)), name,
                      struct.pack(">B?", self.ckks_layout.value_bits, self.ckks_seeded)]
        if self.population is not None:  # tagged: configs without one encode as before
            parts += [b"secagg/population", struct.pack(">I", self.population)]
        return b"".join(parts)

    @property
    def digest(self) -> bytes:
        """SHA-256 of :meth:`to_bytes`: bound into every label, signature and AEAD tag."""
        return hashlib.sha256(self.to_bytes()).digest()


def _graph(
    kind: ProtocolKind, n: int, k: int | None, t: int | None,
    rates: dict[str, float], sigma: int, eta: int, population: int | None = None,
) -> tuple[int, int]:
    """Resolve (k, threshold) for the protocol.

    Raises:
        ConfigError: as :func:`secagg.protocols.params.graph_parameters`, or a SecAgg ``k != n-1``.
    """
    if kind is ProtocolKind.PLAIN:
        if k not in (None, 0) or t not in (None, 1):
            raise ConfigError("the plaintext baseline takes no k and threshold 1")
        return 0, 1
    if kind is ProtocolKind.CKKS:
        if k not in (None, 0):
            raise ConfigError("ckks has no neighbour graph: k must be 0")
        t = 1 if t is None else t
        if not 1 <= t <= n:
            raise ConfigError(f"ckks threshold (fewest inputs summed) must be in [1, {n}]")
        return 0, t
    if kind is ProtocolKind.SECAGG:
        if k not in (None, n - 1):
            raise ConfigError(f"SecAgg uses the complete graph: k must be n-1 = {n - 1}")
        k = n - 1
    kw: dict[str, Any] = {"sigma": sigma, "eta": eta, "population": population, **rates}
    if kind is ProtocolKind.SECAGG and t is None:
        corrupt = corrupt_count(n, rates["corruption_rate"], population)
        t = security_threshold(n, n - 1, corrupt, sigma)
    return graph_parameters(n, k=k, t=t, **kw)


def _ckks_default_fixed_point(
    kind: ProtocolKind, fp: FixedPointConfig, preset: str | None, seeded: bool
) -> FixedPointConfig:
    """The fixed point of the ``"ckks"`` default scale (see the module docstring).

    Tries every scale from ``fp.scale`` (the generic default, at most 16) down to
    ``CKKS_MIN_SCALE`` and keeps the largest whose layout costs the fewest bytes per value
    (estimated bytes per slot of its preset over lanes per slot). Returns ``fp`` itself when
    its scale is already below ``CKKS_MIN_SCALE`` or no scale in the range has a layout (the
    caller's :func:`_ckks_layout` then says why).
    """
    best: tuple[float, FixedPointConfig] | None = None
    for s in range(fp.scale, CKKS_MIN_SCALE - 1, -1):
        cand = _fixed_point(fp.n_max, fp.clip, None, s)
        try:
            layout = _ckks_layout(kind, cand, preset, seeded)
        except ConfigError:
            continue
        assert layout is not None  # kind is a CKKS protocol
        cost = layout.preset.slot_bytes_estimate / layout.lanes_per_slot
        if best is None or cost < best[0]:  # a tie keeps the larger scale, tried first
            best = (cost, cand)
    return fp if best is None else best[1]


def _ckks_layout(
    kind: ProtocolKind, fp: FixedPointConfig, preset: str | None, seeded: bool
) -> SlotLayout | None:
    """The CKKS slot layout for ``kind`` (None if not CKKS); checks the CKKS options.

    Raises:
        TypeError: ``preset`` is not a str, ``seeded`` not a bool.
        ConfigError: a CKKS option given for a non-CKKS protocol; ``preset`` unknown, a float
            preset, or no preset holds the exact sum of ``n`` values.
    """
    if preset is not None and not isinstance(preset, str):
        raise TypeError(f"ckks_preset must be str, got {type(preset).__name__}")
    _bool("ckks_seeded", seeded)
    if not kind.is_ckks:
        if preset is not None or not seeded:
            raise ConfigError("ckks_preset and ckks_seeded apply to the CKKS protocols only")
        return None
    if kind is ProtocolKind.CKKS_MASK:
        value_bits = fp.bits  # masked ring elements, lifted to two's complement
    else:  # one clipped fixed-point value in [-ceil(clip 2^scale), +ceil(clip 2^scale)]
        value_bits = FixedPointConfig.minimal_bits(n_max=1, clip=fp.clip, scale=fp.scale)
    try:
        if preset is None:
            return choose_preset(value_bits=value_bits, n_max=fp.n_max)
        if preset not in PRESETS:
            raise ConfigError(f"unknown ckks_preset {preset!r}; known: {sorted(PRESETS)}")
        return SlotLayout.for_values(preset=PRESETS[preset], value_bits=value_bits,
                                     n_max=fp.n_max)
    except (RangeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"CKKS layout: {exc}") from exc

"""Slot layout: several signed integers share one CKKS slot and their sums decode exactly.

See :mod:`secagg.ckks_params` for the limits (modulus, doubles, noise) that bound the payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from secagg._check import check_int
from secagg.ckks_params import (
    EXACT_PAYLOAD_BITS_MAX,
    MAX_SCALE_BITS,
    MODULUS_HEADROOM_BITS,
    PRESETS,
    CkksPreset,
    min_scale_bits,
    payload_limit,
)
from secagg.errors import RangeError

__all__ = ["SlotLayout", "choose_preset"]


@dataclass(frozen=True)
class SlotLayout:
    """How signed integers of ``value_bits`` share CKKS slots so that ``n_max`` sums decode exactly.

    Values lie in ``[-2^(value_bits-1), 2^(value_bits-1))``; unsigned ring elements (masked
    vectors mod ``2^b``) are passed through their two's-complement lift, which keeps the sum
    congruent mod ``2^b``. Value ``i`` goes to slot ``i // lanes_per_slot``, lane
    ``i % lanes_per_slot``. Build it with :meth:`for_values`; the constructor re-checks every
    invariant, so a layout received from elsewhere cannot be inconsistent.

    Raises:
        TypeError, ValueError: a field is inconsistent with the others or with the preset.
        RangeError: the payload or scale does not fit the preset.
    """

    preset: CkksPreset
    value_bits: int
    n_max: int
    lane_bits: int
    lanes_per_slot: int
    slots_per_ciphertext: int
    scale_bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.preset, CkksPreset):
            raise TypeError("preset must be a CkksPreset")
        if self.preset.is_float:
            raise ValueError(f"preset {self.preset.name!r} is a float preset, not an integer one")
        check_int("value_bits", self.value_bits, lo=1, hi=EXACT_PAYLOAD_BITS_MAX)
        check_int("n_max", self.n_max, lo=1, hi=2**32 - 1)
        if self.lane_bits != _lane_bits(self.value_bits, self.n_max):
            raise ValueError("lane_bits must be value_bits + ceil(log2(n_max))")
        check_int("lanes_per_slot", self.lanes_per_slot, lo=1)
        if self.slots_per_ciphertext != self.preset.slots:
            raise ValueError("slots_per_ciphertext must be N/2 of the preset")
        check_int("scale_bits", self.scale_bits, lo=1, hi=MAX_SCALE_BITS)
        need = min_scale_bits(poly_modulus_degree=self.preset.poly_modulus_degree, n_max=self.n_max)
        if self.scale_bits < need:
            raise RangeError(f"scale_bits {self.scale_bits} < {need} needed for n_max={self.n_max}")
        if self.payload_bits > EXACT_PAYLOAD_BITS_MAX or (
            self.payload_bits + self.scale_bits > self.preset.data_bits - MODULUS_HEADROOM_BITS
        ):
            raise RangeError(f"payload of {self.payload_bits} bits does not fit {self.preset.name}")

    @classmethod
    def for_values(cls, *, preset: CkksPreset, value_bits: int, n_max: int) -> SlotLayout:
        """The layout with the most lanes per slot for this preset, value width and summand bound.

        The scale is the smallest that keeps ``n_max`` summands exact, raised by whatever
        modulus bits the lanes leave over (capped at ``MAX_SCALE_BITS``).

        Raises:
            TypeError: wrong argument types.
            ValueError: a float preset, ``value_bits`` outside [1, 45], ``n_max`` outside
                [1, 2^32).
            RangeError: not even one lane fits (the sum needs more bits than the preset allows).
        """
        if not isinstance(preset, CkksPreset):
            raise TypeError(f"preset must be CkksPreset, got {type(preset).__name__}")
        if preset.is_float:
            raise ValueError(f"preset {preset.name!r} is a float preset; use an exact-* preset")
        check_int("value_bits", value_bits, lo=1, hi=EXACT_PAYLOAD_BITS_MAX)
        check_int("n_max", n_max, lo=1, hi=2**32 - 1)
        lane = _lane_bits(value_bits, n_max)
        limit = payload_limit(preset=preset, n_max=n_max)
        lanes = limit // lane
        if lanes < 1:
            raise RangeError(
                f"a sum of {n_max} values of {value_bits} bits needs {lane} bits per lane, but "
                f"{preset.name} holds at most {limit} exact bits per slot at that n_max"
            )
        payload = lanes * lane
        scale = min(MAX_SCALE_BITS, preset.data_bits - MODULUS_HEADROOM_BITS - payload)
        return cls(
            preset=preset,
            value_bits=value_bits,
            n_max=n_max,
            lane_bits=lane,
            lanes_per_slot=lanes,
            slots_per_ciphertext=preset.slots,
            scale_bits=scale,
        )

    @property
    def payload_bits(self) -> int:
        """Signed bits carried per slot (``lanes_per_slot * lane_bits``)."""
        return self.lanes_per_slot * self.lane_bits

    @property
    def values_per_ciphertext(self) -> int:
        """Integers per ciphertext."""
        return self.lanes_per_slot * self.slots_per_ciphertext

    def slots_for(self, count: int) -> int:
        """Slots used by ``count`` values.

        Raises:
            TypeError, ValueError: ``count`` is not a positive int.
        """
        check_int("count", count, lo=1)
        return -(-count // self.lanes_per_slot)

    def ciphertexts_for(self, count: int) -> int:
        """Ciphertexts (chunks) needed for ``count`` values.

        Raises:
            TypeError, ValueError: ``count`` is not a positive int.
        """
        return -(-self.slots_for(count) // self.slots_per_ciphertext)

    def pack(self, values: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Pack signed integers into slot integers (int64, one per slot, last slot zero-padded).

        Raises:
            TypeError: not a 1-D integer numpy array.
            ValueError: empty.
            RangeError: a value outside ``[-2^(value_bits-1), 2^(value_bits-1))``.
        """
        v = _as_int64(values)
        half = 1 << (self.value_bits - 1)
        if int(v.min()) < -half or int(v.max()) >= half:
            raise RangeError(
                f"values must lie in [-2^{self.value_bits - 1}, 2^{self.value_bits - 1}), got "
                f"[{int(v.min())}, {int(v.max())}]"
            )
        lanes = self.lanes_per_slot
        pad = (-v.size) % lanes
        if pad:
            v = np.concatenate([v, np.zeros(pad, dtype=np.int64)])
        grid = v.reshape(-1, lanes)
        slots = grid[:, 0].copy()
        for j in range(1, lanes):
            # Multiplication, not <<, so negative lanes are well defined; |slot| < 2^45.
            slots += grid[:, j] * np.int64(1 << (j * self.lane_bits))
        return slots

    def unpack(
        self, slots: np.ndarray[Any, Any], *, count: int, n: int
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Split slot integers (sums of ``n`` packings) back into ``count`` signed lane sums.

        Raises:
            TypeError: not a 1-D integer array, or ``count``/``n`` not int.
            ValueError: wrong number of slots, ``n`` outside [1, n_max].
            RangeError: a lane sum outside what ``n`` values can produce, or non-zero padding
                (the slots were not produced by this layout and ``n`` summands).
        """
        check_int("n", n, lo=1, hi=self.n_max)
        s = _as_int64(slots).copy()
        if s.size != self.slots_for(count):
            raise ValueError(f"expected {self.slots_for(count)} slots, got {s.size}")
        lb = self.lane_bits
        mask = np.int64((1 << lb) - 1)
        half = np.int64(1 << (lb - 1))
        out = np.empty((s.size, self.lanes_per_slot), dtype=np.int64)
        for j in range(self.lanes_per_slot - 1):
            digit = ((s + half) & mask) - half  # balanced digit in [-2^(lb-1), 2^(lb-1))
            out[:, j] = digit
            s = (s - digit) >> lb  # exact: s - digit is a multiple of 2^lb
        out[:, -1] = s
        flat = out.reshape(-1)
        lo = -n * (1 << (self.value_bits - 1))
        hi = n * ((1 << (self.value_bits - 1)) - 1)
        if int(flat.min()) < lo or int(flat.max()) > hi:
            raise RangeError(f"a lane sum lies outside [{lo}, {hi}] (the range of {n} values)")
        if np.any(flat[count:]):
            raise RangeError("padding lanes are not zero")
        return flat[:count].copy()


def choose_preset(*, value_bits: int, n_max: int) -> SlotLayout:
    """The cheapest integer preset (bytes per value) that holds the sum, lanes maximised.

    Returns the :class:`SlotLayout`; its ``preset`` is the chosen preset. Ties go to the
    preset listed first in :data:`PRESETS` (the smaller one).

    Raises:
        TypeError, ValueError: as :meth:`SlotLayout.for_values`.
        RangeError: no integer preset holds a sum of ``n_max`` values of ``value_bits`` bits.
    """
    best: SlotLayout | None = None
    for preset in PRESETS.values():
        if preset.is_float:
            continue
        try:
            layout = SlotLayout.for_values(preset=preset, value_bits=value_bits, n_max=n_max)
        except RangeError:
            continue
        cost = preset.slot_bytes_estimate / layout.lanes_per_slot
        if best is None or cost < best.preset.slot_bytes_estimate / best.lanes_per_slot:
            best = layout
    if best is None:
        raise RangeError(
            f"no preset holds a sum of {n_max} values of {value_bits} bits exactly "
            f"(needs {_lane_bits(value_bits, n_max)} bits; at most {EXACT_PAYLOAD_BITS_MAX})"
        )
    return best


def _lane_bits(value_bits: int, n_max: int) -> int:
    # n values in [-2^(b-1), 2^(b-1)) sum into [-n 2^(b-1), n 2^(b-1)), inside a signed lane
    # of b + ceil(log2 n) bits.
    return value_bits + (n_max - 1).bit_length()


def _as_int64(values: Any) -> np.ndarray[Any, np.dtype[np.int64]]:
    if not isinstance(values, np.ndarray):
        raise TypeError(f"values must be a numpy array, got {type(values).__name__}")
    if values.ndim != 1:
        raise TypeError(f"values must be 1-D, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"values must have an integer dtype, got {values.dtype}")
    if values.size == 0:
        raise ValueError("values must not be empty")
    if values.dtype == np.uint64 and int(values.max()) >= 2**63:
        raise RangeError("values exceed the int64 range")
    return values.astype(np.int64, copy=False)

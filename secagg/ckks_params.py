"""CKKS parameter presets and the measured limits of exact integer payloads.

Hazardous layer: every parameter is explicit and validated; nothing here touches TenSEAL, so
the maths can be tested (and reasoned about) on its own.

Why several integers fit one slot. A CKKS slot holds a real number ``z``; encryption at scale
``2^s`` stores ``round(z * 2^s)`` (through an FFT in doubles) in a polynomial whose
coefficients live modulo the *data* modulus ``q`` (every prime of the chain but the last,
special one). Decryption returns ``z + e`` with a small error ``e``. When every client's ``z`` is
an integer and ``|e| < 1/2`` for the sum, rounding recovers the integer sum exactly, so ``z`` can
carry ``L`` signed "lanes" of ``lane_bits`` each, ``z = sum_j lane_j * 2^(j * lane_bits)``,
where one lane holds the sum of ``n_max`` values of ``value_bits`` bits. Three limits bound the
payload ``P = L * lane_bits`` (all measured with TenSEAL 0.3.18, see the constants below):

* the modulus: coefficients reach ``2^(P - 1 + s)`` and must stay below ``q / 2``;
* the doubles: encode/decode round-off grows as ``2^(P - 51)``;
* the noise: the error of a sum of ``n`` fresh ciphertexts grows as ``sqrt(n)``, so the scale
  must grow with ``n_max`` (which eats modulus bits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from secagg._check import check_int

__all__ = [
    "EXACT_PAYLOAD_BITS_MAX",
    "FRESH_NOISE_SIGMA_FACTOR",
    "MAX_ROUNDING_ERROR",
    "MAX_SCALE_BITS",
    "MODULUS_HEADROOM_BITS",
    "NOISE_SIGMAS",
    "PRESETS",
    "ROUNDOFF_BOUND",
    "SECURE_COEFF_BITS_128",
    "CkksPreset",
    "min_scale_bits",
    "payload_limit",
]

#: HomomorphicEncryption.org security standard (Albrecht et al. 2018), table for 128-bit
#: classical security with a ternary secret: the largest total coefficient-modulus bit count
#: for each ring degree ``N``. SEAL enforces the same table.
SECURE_COEFF_BITS_128: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

#: Fresh-ciphertext error per slot, standard deviation in units of ``1/scale``:
#: ``FRESH_NOISE_SIGMA_FACTOR * sqrt(N / 2)``. SEAL samples the error with sigma 3.2; the
#: canonical embedding multiplies it by ``sqrt(N / 2)`` (real part). Measured, N=4096, symmetric
#: encryption: std 147.2 over 204,800 slots (max 703, 4.8 sigma); a sum of 100 ciphertexts
#: 1456 (sqrt(n) growth, as predicted). 3.3 * sqrt(2048) = 149.3 covers it.
FRESH_NOISE_SIGMA_FACTOR = 3.3

#: Largest exact payload (bits per slot, signed) that survives the double-precision FFTs of
#: encode and decode. Measured encode+decode round-off (no encryption, N=4096, 10,240 slots):
#: max 0.0011 at 41 bits, 0.018 at 45, 0.078 at 47, 0.31 at 49, 0.56 at 50 (no longer exact),
#: i.e. about 2^(P - 51). We stop at 45 bits, where round-off stays below 2^(P - 50) = 1/32.
EXACT_PAYLOAD_BITS_MAX = 45

#: Bits of the data modulus that the payload and the scale may not use: a ``P``-bit signed
#: payload at scale ``2^s`` encodes to coefficients below ``2^(P - 1 + s)``; SEAL refuses an
#: encoding whose coefficients reach the modulus bit count (measured with the 60-bit data prime of
#: [60, 49]: ``P + s = 59`` encodes, 60 is refused). One more bit is kept for the noise of the sum
#: and the lanes' overhang (a slot of extreme lanes reaches 2^(P-1) * (1 + 2^(1-lane_bits))):
#: ``P + s <= data_bits - 2``.
MODULUS_HEADROOM_BITS = 2

#: Decoding rounds each slot; it is exact while ``|error| < 1/2``. We require the round-off bound
#: plus ``NOISE_SIGMAS`` standard deviations of the noise of ``n_max`` summands to stay below
#: ``MAX_ROUNDING_ERROR``, and decryption rejects (``CkksError``) any slot further than that from an
#: integer: honest sums fail with probability below 1e-23 per slot (10 sigma, sub-Gaussian noise),
#: while a wrong key or a tampered ciphertext yields uniform fractions and is caught.
NOISE_SIGMAS = 10
MAX_ROUNDING_ERROR = 0.375
ROUNDOFF_BOUND = 2.0 ** (EXACT_PAYLOAD_BITS_MAX - 50)

#: Leftover modulus bits go into the scale (more noise margin for free), up to this many.
MAX_SCALE_BITS = 40


@dataclass(frozen=True)
class CkksPreset:
    """A validated CKKS parameter set for addition-only aggregation.

    Attributes:
        name: registry key.
        poly_modulus_degree: ring degree ``N`` (``N / 2`` slots per ciphertext).
        coeff_mod_bit_sizes: bit sizes of the prime chain; the last prime is SEAL's special
            (key-switching) prime, the others form the data modulus that ciphertexts carry.
        scale_bits: encoding scale ``2^scale_bits`` for float presets; ``None`` for integer
            presets, whose scale is chosen per :class:`SlotLayout` from ``n_max``.
        note: where the parameters come from and what they are for.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: insecure (total bits above the 128-bit table), unsupported ``N``, a prime
            size outside [20, 60], fewer than two primes (TenSEAL needs key switching), or a
            scale that leaves no room for values.
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int | None
    note: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError("name must be str")
        if not (0 < len(self.name) < 64 and self.name.isascii() and self.name.isprintable()):
            raise ValueError("name must be 1 to 63 printable ASCII characters")
        if not isinstance(self.note, str):
            raise TypeError("note must be str")
        n = check_int("poly_modulus_degree", self.poly_modulus_degree)
        if n not in SECURE_COEFF_BITS_128:
            raise ValueError(
                f"poly_modulus_degree must be one of {sorted(SECURE_COEFF_BITS_128)}, got {n}"
            )
        if not isinstance(self.coeff_mod_bit_sizes, tuple):
            raise TypeError("coeff_mod_bit_sizes must be a tuple of int")
        if len(self.coeff_mod_bit_sizes) < 2:
            raise ValueError(
                "coeff_mod_bit_sizes needs at least two primes: TenSEAL generates key-switching "
                "keys, which a single-prime chain cannot have"
            )
        for bits in self.coeff_mod_bit_sizes:
            check_int("coeff_mod_bit_sizes[i]", bits, lo=20, hi=60)
        total = sum(self.coeff_mod_bit_sizes)
        if total > SECURE_COEFF_BITS_128[n]:
            raise ValueError(
                f"insecure: {total} coefficient-modulus bits exceed the 128-bit limit "
                f"{SECURE_COEFF_BITS_128[n]} for N={n} (HomomorphicEncryption.org standard)"
            )
        if self.scale_bits is not None:
            check_int("scale_bits", self.scale_bits, lo=1, hi=self.data_bits - 4)

    @property
    def data_bits(self) -> int:
        """Bits of the data modulus (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def slots(self) -> int:
        """Slots per ciphertext (``N / 2``)."""
        return self.poly_modulus_degree // 2

    @property
    def is_float(self) -> bool:
        """True for presets that encode floats at a fixed scale."""
        return self.scale_bits is not None

    @property
    def float_max_abs(self) -> float:
        """Largest magnitude a float sum may reach without wrapping around the modulus.

        Raises:
            ValueError: an integer preset (no fixed scale).
        """
        if self.scale_bits is None:
            raise ValueError(f"preset {self.name!r} is an integer preset; it has no float range")
        return 2.0 ** (self.data_bits - MODULUS_HEADROOM_BITS - 1 - self.scale_bits)

    @property
    def slot_bytes_estimate(self) -> float:
        """Serialized bytes per slot of a full ciphertext (two polynomials, zstd).

        SEAL stores each coefficient in a 64-bit word per data prime; zstd removes part of the
        unused high bytes: about ``ceil(bits/8) + 1`` bytes per word below 60 bits. Within 5%
        of TenSEAL 0.3.18 (N=4096 [60,49]: 32.1 measured; [40,40,29]: 46.1 vs 48). A seeded
        (symmetric, fresh) ciphertext costs about half.
        """
        words = sum(min(8, math.ceil(b / 8) + 1) for b in self.coeff_mod_bit_sizes[:-1])
        return 4.0 * words


def _presets(*items: CkksPreset) -> dict[str, CkksPreset]:
    return {p.name: p for p in items}


#: Named presets, cheapest first. Integer presets are listed before float ones.
PRESETS: dict[str, CkksPreset] = _presets(
    CkksPreset(
        name="exact-4096",
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(60, 49),
        scale_bits=None,
        note="integers packed several per slot, decoded exactly; one 60-bit data prime "
        "(109 bits in all: the 128-bit maximum for N=4096)",
    ),
    CkksPreset(
        name="exact-4096-wide",
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(40, 40, 29),
        scale_bits=None,
        note="integers, 80-bit data modulus: the full 45-bit exact payload for any n_max, "
        "at about 1.45x the bytes per slot of exact-4096",
    ),
    CkksPreset(
        name="float-4096",
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(60, 40),
        scale_bits=40,
        note="one float per slot at scale 2^40: absolute error about 1e-9 per summand, sums "
        "up to 2^17 in magnitude",
    ),
    CkksPreset(
        name="nvflare-8192",
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=(60, 40, 40),
        scale_bits=40,
        note="NVFlare's default HE parameters; reference for benchmarks only",
    ),
)


def min_scale_bits(*, poly_modulus_degree: int, n_max: int) -> int:
    """Smallest scale (bits) at which a sum of ``n_max`` fresh ciphertexts decodes exactly.

    Requires ``NOISE_SIGMAS * sigma_1 * sqrt(n_max) / 2^s`` plus the double round-off bound to
    stay within ``MAX_ROUNDING_ERROR``.

    Raises:
        TypeError: an argument is not an int.
        ValueError: ``poly_modulus_degree`` unsupported or ``n_max`` < 1.
    """
    n = check_int("poly_modulus_degree", poly_modulus_degree)
    if n not in SECURE_COEFF_BITS_128:
        raise ValueError(f"poly_modulus_degree must be one of {sorted(SECURE_COEFF_BITS_128)}")
    terms = check_int("n_max", n_max, lo=1)
    sigma = FRESH_NOISE_SIGMA_FACTOR * math.sqrt(n / 2) * math.sqrt(terms)
    return math.ceil(math.log2(NOISE_SIGMAS * sigma / (MAX_ROUNDING_ERROR - ROUNDOFF_BOUND)))


def payload_limit(*, preset: CkksPreset, n_max: int) -> int:
    """Exact payload bits per slot for a sum of ``n_max`` ciphertexts under ``preset``.

    Raises:
        TypeError, ValueError: as :func:`min_scale_bits`.
    """
    scale = min_scale_bits(poly_modulus_degree=preset.poly_modulus_degree, n_max=n_max)
    return max(0, min(EXACT_PAYLOAD_BITS_MAX, preset.data_bits - MODULUS_HEADROOM_BITS - scale))

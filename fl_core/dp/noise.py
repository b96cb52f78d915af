"""Noise from a CSPRNG: AES-256-CTR keystream keyed by 32 bytes from :mod:`secagg.rng`.

DP noise must not come from ``numpy.random``, ``random`` or torch's default generator: those are
predictable from their outputs, and a predictable noise draw can be subtracted again. Here every
bit comes from an AES-256-CTR keystream (``cryptography``) under a fresh 32-byte key.

The discrete Gaussian sampler is Algorithm 3 of Canonne, Kamath and Steinke, "The Discrete
Gaussian for Differential Privacy" (NeurIPS 2020): a discrete Laplace proposal with scale
``t = floor(sigma) + 1`` accepted with probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``.
It is vectorised (rejected draws are redrawn as a batch). The Bernoulli and geometric steps use
53-bit floats, so the output matches the exact distribution up to float rounding (relative
errors of order 2^-50 in each probability), not bit-exactly as the paper's integer-only version.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from secagg.rng import random_bytes

__all__ = ["NoiseSource"]

_KEY_BYTES = 32
_TEST_LABEL = b"secagg.fl_core.dp.noise/for_testing/v1"
_TWO_M53 = 2.0**-53


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


def _check_scale(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


class NoiseSource:
    """CSPRNG noise: AES-256-CTR keystream (cryptography) keyed by 32 bytes from secagg.rng.

    Not thread-safe: one source per thread.
    """

    def __init__(self) -> None:
        self._init_key(random_bytes(_KEY_BYTES))

    def _init_key(self, key: bytes) -> None:
        cipher = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16))
        self._encryptor = cipher.encryptor()

    @classmethod
    def from_seed(cls, seed: bytes, label: bytes) -> NoiseSource:
        """A stream keyed by HKDF-SHA256(``seed``, info=``label``): the same seed and label
        give the same draws (a released noise component is re-expanded from its seed).
        ``seed`` must be 32 bytes of CSPRNG output that nobody else knows until released.

        Raises:
            TypeError: ``seed`` or ``label`` is not bytes.
            ValueError: ``seed`` is not 32 bytes or ``label`` is empty.
        """
        if not isinstance(seed, bytes) or not isinstance(label, bytes):
            raise TypeError("seed and label must be bytes")
        if len(seed) != _KEY_BYTES or not label:
            raise ValueError(f"seed must be {_KEY_BYTES} bytes and label non-empty")
        key = HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None,
                   info=label).derive(seed)
        source = cls.__new__(cls)
        source._init_key(key)
        return source

    @classmethod
    def for_testing(cls, seed: bytes) -> NoiseSource:
        """A reproducible source derived from ``seed``. FOR TESTS ONLY: it gives no privacy.

        Raises:
            TypeError: ``seed`` is not bytes.
            ValueError: ``seed`` is empty.
        """
        if not isinstance(seed, bytes):
            raise TypeError(f"seed must be bytes, got {type(seed).__name__}")
        if not seed:
            raise ValueError("seed must not be empty")
        source = cls.__new__(cls)
        source._init_key(hashlib.sha256(_TEST_LABEL + seed).digest())
        return source

    def _uint64(self, n: int) -> NDArray[np.uint64]:
        raw = self._encryptor.update(bytes(8 * n))
        return np.frombuffer(raw, dtype="<u8").astype(np.uint64)

    def uniform(self, n: int) -> NDArray[np.float64]:
        """``n`` uniform floats in the open interval (0, 1), 53 random bits each.

        Raises:
            TypeError: ``n`` is not an int.
            ValueError: ``n`` is negative.
        """
        _check_count(n)
        top53 = (self._uint64(n) >> np.uint64(11)).astype(np.float64)
        return (top53 + 0.5) * _TWO_M53  # midpoints: never exactly 0 or 1

    def gaussian(self, n: int, std: float) -> NDArray[np.float64]:
        """``n`` draws of N(0, std^2) by the Box-Muller transform.

        Raises:
            TypeError: ``n`` is not an int or ``std`` not a number.
            ValueError: ``n`` is negative or ``std`` negative or not finite.
        """
        _check_count(n)
        _check_scale("std", std)
        half = (n + 1) // 2
        u = self.uniform(2 * half)
        radius = np.sqrt(-2.0 * np.log(u[:half]))
        angle = 2.0 * np.pi * u[half:]
        z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]
        return z * float(std)

    def _discrete_laplace(self, n: int, scale: int) -> NDArray[np.int64]:
        """P(Y = y) proportional to exp(-|y| / scale): difference of two geometric draws."""
        u = self.uniform(2 * n)
        geometric = np.floor(-float(scale) * np.log(u)).astype(np.int64)
        return geometric[:n] - geometric[n:]

    def discrete_gaussian(self, n: int, sigma: float) -> NDArray[np.int64]:
        """``n`` draws of the discrete Gaussian N_Z(0, sigma^2) (CKS20 Alg. 3, vectorised).

        ``P(X = x)`` is proportional to ``exp(-x^2 / (2 sigma^2))`` on the integers;
        ``sigma == 0`` gives zeros.

        Raises:
            TypeError: ``n`` is not an int or ``sigma`` not a number.
            ValueError: ``n`` is negative, or ``sigma`` negative, not finite or above 2^40.
        """
        _check_count(n)
        _check_scale("sigma", sigma)
        if sigma > 2.0**40:
            raise ValueError(f"sigma must be <= 2^40, got {sigma!r}")
        out = np.zeros(n, dtype=np.int64)
        if sigma == 0 or n == 0:
            return out
        scale = math.floor(sigma) + 1
        shift = sigma * sigma / scale
        todo = np.arange(n)
        while todo.size:
            y = self._discrete_laplace(todo.size, scale)
            gamma = (np.abs(y) - shift) ** 2 / (2.0 * sigma * sigma)
            accept = self.uniform(todo.size) < np.exp(-gamma)
            out[todo[accept]] = y[accept]
            todo = todo[~accept]
        return out

    def poisson_mask(self, n: int, rate: float) -> NDArray[np.bool_]:
        """Poisson sampling: each of ``n`` items is independently included with prob. ``rate``.

        Raises:
            TypeError: ``n`` is not an int or ``rate`` not a number.
            ValueError: ``n`` is negative or ``rate`` outside [0, 1].
        """
        _check_count(n)
        _check_scale("rate", rate)
        if rate > 1:
            raise ValueError(f"rate must be <= 1, got {rate!r}")
        return self.uniform(n) < rate

"""Seeded symmetric CKKS encryption: half-size fresh ciphertexts.

A symmetric RLWE ciphertext is ``(c0, c1)`` with ``c1`` uniformly random; SEAL can serialize
``c1`` as the seed of the PRNG that drew it, which halves a fresh ciphertext (16 instead of 32
bytes per slot for N=4096 with one 60-bit data prime). SEAL's ``Ciphertext::load`` expands the
seed, so the receiving side (TenSEAL, with a public context) needs nothing special; sums are
stored in full.

TenSEAL 0.3.18's own ``CKKSVector.serialize`` never seeds. Its ``tenseal.sealapi`` bindings do
expose ``Encryptor.encrypt_symmetric`` returning a seeded ``Serializable<Ciphertext>``, but only
with ``save(path)``. We point that path at an anonymous in-memory file (Linux ``memfd_create``,
opened through ``/proc/self/fd``): no file system is touched and nothing outlives the call. On
platforms without it, :func:`seeded_available` is False and callers fall back to TenSEAL's
unseeded serialization (same wire format, twice the size).

Encryption randomness comes from SEAL's own PRNG (Blake2xb, seeded from the OS by SEAL), as in
every TenSEAL encryption.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from secagg.errors import CkksError

__all__ = ["SeededEncryptor", "seeded_available"]


@contextmanager
def _memfile() -> Iterator[tuple[int, str]]:
    fd = os.memfd_create("secagg-ckks", os.MFD_CLOEXEC)  # type: ignore[attr-defined,unused-ignore]
    try:
        yield fd, f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)


@functools.cache
def seeded_available() -> bool:
    """True when seeded ciphertexts can be produced here (tenseal.sealapi and memfd work)."""
    if not hasattr(os, "memfd_create"):
        return False
    try:
        import tenseal.sealapi  # noqa: F401

        with _memfile() as (fd, path):
            os.write(fd, b"probe")
            with open(path, "rb") as f:  # the path must reach the same in-memory file
                return f.read() == b"probe"
    except (ImportError, OSError):
        return False


class SeededEncryptor:
    """Encrypts with a secret key through ``tenseal.sealapi`` and returns seeded ciphertexts.

    Raises (constructor):
        CkksError: seeded encryption unavailable here, or the secret key does not load under
            these parameters.
    """

    def __init__(
        self, *, poly_modulus_degree: int, coeff_mod_bit_sizes: Sequence[int], secret_key: bytes
    ) -> None:
        if not seeded_available():
            raise CkksError("seeded encryption needs tenseal.sealapi and memfd_create (Linux)")
        import tenseal.sealapi as sa

        parms = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(poly_modulus_degree)
        # CoeffModulus.Create is deterministic, so these are TenSEAL's primes (same parms_id).
        parms.set_coeff_modulus(
            sa.CoeffModulus.Create(poly_modulus_degree, list(coeff_mod_bit_sizes))
        )
        self._context: Any = sa.SEALContext(parms, True, sa.SEC_LEVEL_TYPE.TC128)
        key: Any = sa.SecretKey()
        try:
            with _memfile() as (fd, path):
                os.write(fd, secret_key)
                key.load(self._context, path)
                os.ftruncate(fd, 0)
        except Exception as exc:  # SEAL reports every load failure as a generic exception
            raise CkksError("secret key does not load under these parameters") from exc
        self._encryptor: Any = sa.Encryptor(self._context, key)
        self._encoder: Any = sa.CKKSEncoder(self._context)
        self._plaintext: Any = sa.Plaintext

    def encrypt_many(
        self, chunks: Sequence[np.ndarray[Any, np.dtype[np.float64]]], *, scale: float
    ) -> list[bytes]:
        """Encode each chunk (at most N/2 values, zero-padded) at ``scale`` and encrypt it.

        Returns the serialized seeded SEAL ciphertexts, one per chunk.

        Raises:
            CkksError: SEAL refused the encoding (values too large for the modulus).
        """
        out: list[bytes] = []
        with _memfile() as (fd, path):
            for chunk in chunks:
                plain = self._plaintext()
                try:
                    self._encoder.encode(chunk.tolist(), scale, plain)
                except Exception as exc:
                    raise CkksError(f"CKKS encoding failed: {exc}") from exc
                self._encryptor.encrypt_symmetric(plain).save(path)
                out.append(_read_all(fd))
        return out

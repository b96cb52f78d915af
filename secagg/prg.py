"""Mask PRG: AES-256-CTR keyed by HKDF-SHA256 over the full 32-byte seed.

Pairwise and self masks in SecAgg are expanded from a shared seed into one uint32 word per
model parameter. The keystream is produced straight into one preallocated scratch buffer in
:data:`CHUNK_BYTES` pieces (``update_into``, no fresh bytes objects) and added into the
caller's vector while the chunk is still in cache. The ring is ``Z / 2^bits`` with
``bits <= 32``; because ``2^bits`` divides ``2^32``, reducing a uniform 32-bit word mod
``2^bits`` is exactly uniform (no rejection sampling needed).

Domain separation: the AES key is ``HKDF-SHA256(ikm=seed, salt=b"secagg/prg/v1", info=label)``,
so one seed never yields the same stream under two labels (protocol, round, pair, "self").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg import rng
from secagg._check import check_bytes, check_int

__all__ = [
    "CHUNK_BYTES",
    "SEED_BYTES",
    "MaskPRG",
    "derive_key",
    "keystream_into",
    "random_uint32",
]

SEED_BYTES = 32
"""Length of a mask seed (and of the derived AES-256 key)."""

CHUNK_BYTES = 256 * 1024
"""Keystream produced per ``update_into`` call: small enough to stay in L2 for the add."""

_HKDF_SALT = b"secagg/prg/v1"
_NONCE = bytes(16)  # CTR counter block starts at 0; every key is used for exactly one stream.
_ZEROS = bytes(CHUNK_BYTES)  # plaintext of zeros: the ciphertext is the keystream itself.
_WORDS_PER_CHUNK = CHUNK_BYTES // 4
_LE_U32 = np.dtype("<u4")


def derive_key(seed: bytes, label: bytes) -> bytes:
    """Derive the 32-byte AES-256 key for ``seed`` under the domain ``label``.

    ``HKDF-SHA256(ikm=seed, salt=b"secagg/prg/v1", info=label, length=32)``.

    Raises:
        TypeError: ``seed`` or ``label`` is not bytes-like.
        ValueError: ``seed`` is not exactly 32 bytes or ``label`` is empty.
    """
    seed_b = check_bytes("seed", seed, length=SEED_BYTES)
    label_b = check_bytes("label", label, min_length=1)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=label_b)
    return hkdf.derive(seed_b)


def _check_words(name: str, out: Any) -> npt.NDArray[np.uint32]:
    """Check that ``out`` is a writeable, 1-D, C-contiguous uint32 array.

    Raises:
        TypeError: not an ndarray, or dtype is not uint32.
        ValueError: not 1-D, not C-contiguous or read-only.
    """
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.uint32:
        raise TypeError(f"{name} must have dtype uint32, got {out.dtype}")
    if out.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {out.ndim} dimensions")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def _byte_view(name: str, out: Any) -> memoryview:
    """Return a writeable, flat, byte-format memoryview of ``out``.

    Raises:
        TypeError: ``out`` is not a bytearray, memoryview or ndarray.
        ValueError: ``out`` is read-only or not contiguous.
    """
    if isinstance(out, np.ndarray):
        if not out.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        if not out.flags.writeable:
            raise ValueError(f"{name} must be writeable")
        return out.reshape(-1).view(np.uint8).data
    if isinstance(out, (bytearray, memoryview)):
        mv = memoryview(out)
        if mv.readonly:
            raise ValueError(f"{name} must be writeable")
        if not mv.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        return mv.cast("B")
    raise TypeError(
        f"{name} must be bytearray, memoryview or numpy.ndarray, got {type(out).__name__}"
    )


def _encryptor(key: bytes) -> Any:
    return Cipher(algorithms.AES(key), modes.CTR(_NONCE)).encryptor()


def _keystream_into_view(key: bytes, view: memoryview) -> None:
    """Write AES-256-CTR keystream for ``key`` over the whole byte view, chunk by chunk."""
    enc = _encryptor(key)
    total = len(view)
    zeros = memoryview(_ZEROS)
    for start in range(0, total, CHUNK_BYTES):
        stop = min(start + CHUNK_BYTES, total)
        enc.update_into(zeros[: stop - start], view[start:stop])
    enc.finalize()


def keystream_into(key: bytes, out: bytearray | memoryview | npt.NDArray[Any]) -> None:
    """Overwrite ``out`` with the raw AES-256-CTR keystream of ``key`` (counter block 0).

    Writes in :data:`CHUNK_BYTES` chunks straight into ``out``; this is the physical limit the
    mask expansion is measured against.

    Raises:
        TypeError: ``key`` is not bytes-like, or ``out`` is not a bytearray/memoryview/ndarray.
        ValueError: ``key`` is not 32 bytes, or ``out`` is read-only or not contiguous.
    """
    key_b = check_bytes("key", key, length=32)
    view = _byte_view("out", out)
    _keystream_into_view(key_b, view)


class MaskPRG:
    """Expand a 32-byte seed, under a domain label, into masks over ``Z / 2^bits``.

    Every call starts a fresh stream from the derived key (counter 0), so calling
    :meth:`add_into` twice on the same object adds the same mask twice; ``subtract=True``
    with the same length removes it exactly.
    """

    __slots__ = ("_key",)

    def __init__(self, seed: bytes, *, label: bytes) -> None:
        """Derive the AES key for ``seed`` and ``label``.

        Raises:
            TypeError: ``seed`` or ``label`` is not bytes-like.
            ValueError: ``seed`` is not exactly 32 bytes or ``label`` is empty.
        """
        self._key = derive_key(seed, label)

    def __repr__(self) -> str:
        return "MaskPRG(<secret>)"

    def add_into(self, out: npt.NDArray[np.uint32], *, bits: int, subtract: bool = False) -> None:
        """Add (or subtract) the mask into ``out`` in place, modulo ``2^bits``.

        ``out[i] = (out[i] +/- w[i]) mod 2^bits`` where ``w`` is the little-endian uint32 word
        stream of the keystream. Inputs need not already be reduced: the result always is.

        Raises:
            TypeError: ``out`` is not a uint32 ndarray, ``bits`` not an int or ``subtract``
                not a bool.
            ValueError: ``out`` is not 1-D, C-contiguous and writeable, or ``bits`` is not in
                [1, 32].
        """
        words = _check_words("out", out)
        check_int("bits", bits, lo=1, hi=32)
        if not isinstance(subtract, bool):
            raise TypeError(f"subtract must be bool, got {type(subtract).__name__}")
        op = np.subtract if subtract else np.add
        # Reducing each chunk while it is still in cache gives exactly the same words as one
        # ``&=`` over the whole vector at the end, without a second pass over memory.
        mask = np.uint32((1 << bits) - 1) if bits < 32 else None
        scratch_bytes = bytearray(CHUNK_BYTES)  # the one scratch buffer, reused every chunk
        scratch_view = memoryview(scratch_bytes)
        scratch = np.frombuffer(scratch_bytes, dtype=_LE_U32)
        zeros = memoryview(_ZEROS)
        enc = _encryptor(self._key)
        n = words.shape[0]
        for start in range(0, n, _WORDS_PER_CHUNK):
            stop = min(start + _WORDS_PER_CHUNK, n)
            m = stop - start
            enc.update_into(zeros[: 4 * m], scratch_view[: 4 * m])
            dst = words[start:stop]
            op(dst, scratch[:m], out=dst)
            if mask is not None:
                np.bitwise_and(dst, mask, out=dst)
        enc.finalize()

    def fill(self, out: npt.NDArray[np.uint32], *, bits: int) -> None:
        """Overwrite ``out`` with the mask itself (uniform in ``[0, 2^bits)``).

        Raises:
            TypeError: ``out`` is not a uint32 ndarray or ``bits`` not an int.
            ValueError: ``out`` is not 1-D, C-contiguous and writeable, or ``bits`` is not in
                [1, 32].
        """
        words = _check_words("out", out)
        check_int("bits", bits, lo=1, hi=32)
        mask = np.uint32((1 << bits) - 1) if bits < 32 else None
        view = words.view(np.uint8).data
        zeros = memoryview(_ZEROS)
        enc = _encryptor(self._key)
        n = words.shape[0]
        for start in range(0, n, _WORDS_PER_CHUNK):
            stop = min(start + _WORDS_PER_CHUNK, n)
            enc.update_into(zeros[: 4 * (stop - start)], view[4 * start : 4 * stop])
            dst = words[start:stop]
            if not np.little_endian:
                dst.byteswap(inplace=True)  # keystream words are defined little-endian
            if mask is not None:
                np.bitwise_and(dst, mask, out=dst)
        enc.finalize()


def random_uint32(n: int) -> npt.NDArray[np.uint32]:
    """Return ``n`` fresh uniform uint32 words from an AES stream keyed by 32 OS-random bytes.

    For bulk randomness (stochastic rounding); never seeded by the caller.

    Raises:
        TypeError: ``n`` is not an int.
        ValueError: ``n`` is negative.
    """
    check_int("n", n, lo=0)
    out = np.empty(n, dtype=np.uint32)
    _keystream_into_view(rng.random_bytes(SEED_BYTES), out.view(np.uint8).data)
    return out

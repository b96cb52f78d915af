"""Mask PRG: AES-256-CTR keyed by HKDF-SHA256 over the full 32-byte seed.

Pairwise and self masks in SecAgg are expanded from a shared seed into one uint32 word per
model parameter. The keystream is produced straight into one preallocated scratch buffer in
:data:`CHUNK_BYTES` pieces (``update_into``, no fresh bytes objects) and added into the
caller's vector while the chunk is still in cache. The ring is ``Z / 2^bits`` with
``bits <= 32``; because ``2^bits`` divides ``2^32``, reducing a uniform 32-bit word mod
``2^bits`` is exactly uniform (no rejection sampling needed).

Domain separation: the AES key is ``HKDF-SHA256(ikm=seed, salt=b"secagg/prg/v1", info=label)``,
so one seed never yields the same stream under two labels (protocol, round, pair, "self").

Speed, same words: AES-GCM with a zero 96-bit IV encrypts with the counter blocks
``0^96 || 2, 3, ...``, which are exactly CTR's blocks 2, 3, ... (below 2^32 blocks, far beyond
any vector here), and this OpenSSL build runs GCM's stitched AES 1.2-1.3x faster than CTR mode.
Streams of at least :data:`GCM_MIN_BYTES` therefore take their first 32 bytes from CTR and the
rest from GCM (the tag is never computed); shorter ones use CTR alone, where setting up a second
cipher would cost more than it saves. :func:`add_masks_into` adds many masks at once, chunk by
chunk (the output chunk stays in cache across all masks), optionally on several threads (AES
releases the GIL).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    "GCM_MIN_BYTES",
    "SEED_BYTES",
    "MaskPRG",
    "add_masks_into",
    "derive_key",
    "keystream_into",
    "random_uint32",
]

SEED_BYTES = 32
"""Length of a mask seed (and of the derived AES-256 key)."""

CHUNK_BYTES = 256 * 1024
"""Keystream produced per ``update_into`` call: small enough to stay in L2 for the add."""

GCM_MIN_BYTES = 1 << 20
"""Streams at least this long take their body from AES-GCM (same keystream, faster AES)."""

_HKDF_SALT = b"secagg/prg/v1"
_NONCE = bytes(16)  # CTR counter block starts at 0; every key is used for exactly one stream.
_GCM_IV = bytes(12)  # GCM's first keystream block is then CTR's block 2 (its J0 is block 1)
_GCM_SKIP = 32  # the two CTR blocks (0 and 1) GCM never outputs
_GCM_MAX_BYTES = 2**36 - 32  # SP 800-38D: the most one GCM invocation may encrypt
_ZEROS = bytes(CHUNK_BYTES)  # plaintext of zeros: the ciphertext is the keystream itself.
_ZEROS_VIEW = memoryview(_ZEROS)
_WORDS_PER_CHUNK = CHUNK_BYTES // 4
_LE_U32 = np.dtype("<u4")
_MASKS_PER_PASS = 64  # masks whose encryptors are alive at once in add_masks_into
_MIN_WORDS_PER_WORKER = 1 << 22  # below this much keystream, one more thread costs more


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


class _Keystream:
    """The AES-256-CTR keystream of one key from counter block 0, handed out in order.

    From :data:`GCM_MIN_BYTES` on (and within GCM's length limit), bytes ``[0, 32)`` come from
    CTR and the rest from AES-GCM under the zero 96-bit IV (see the module docstring).
    """

    __slots__ = ("_body", "_head")

    def __init__(self, key: bytes, nbytes: int) -> None:
        if GCM_MIN_BYTES <= nbytes <= _GCM_SKIP + _GCM_MAX_BYTES:
            self._head = _encryptor(key).update(bytes(_GCM_SKIP))
            self._body = Cipher(algorithms.AES(key), modes.GCM(_GCM_IV)).encryptor()
        else:
            self._head = b""
            self._body = _encryptor(key)

    def into(self, dst: memoryview) -> None:
        """Write the next ``len(dst)`` (at most :data:`CHUNK_BYTES`) keystream bytes."""
        m = len(dst)
        head = self._head
        if head:
            k = min(m, len(head))
            dst[:k] = head[:k]
            self._head = head[k:]
            dst, m = dst[k:], m - k
        if m:
            self._body.update_into(_ZEROS_VIEW[:m], dst)


def _keystream_into_view(key: bytes, view: memoryview) -> None:
    """Write the keystream of ``key`` over the whole byte view, chunk by chunk."""
    total = len(view)
    stream = _Keystream(key, total)
    for start in range(0, total, CHUNK_BYTES):
        stream.into(view[start : min(start + CHUNK_BYTES, total)])


def keystream_into(key: bytes, out: bytearray | memoryview | npt.NDArray[Any]) -> None:
    """Overwrite ``out`` with the raw AES-256-CTR keystream of ``key`` (counter block 0).

    Writes in :data:`CHUNK_BYTES` chunks straight into ``out`` (from :data:`GCM_MIN_BYTES` on,
    through the faster GCM body: the same bytes); the fastest keystream this module makes.

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
        _add_streams(words, [(self._key, subtract)], bits)

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
        stream = _Keystream(self._key, 4 * words.shape[0])
        n = words.shape[0]
        for start in range(0, n, _WORDS_PER_CHUNK):
            stop = min(start + _WORDS_PER_CHUNK, n)
            stream.into(view[4 * start : 4 * stop])
            dst = words[start:stop]
            if not np.little_endian:
                dst.byteswap(inplace=True)  # keystream words are defined little-endian
            if mask is not None:
                np.bitwise_and(dst, mask, out=dst)


def _add_streams(words: npt.NDArray[np.uint32], keys: Sequence[tuple[bytes, bool]],
                 bits: int) -> None:
    """``words += sum(+-stream(key))`` mod ``2^bits``, chunk-major: each output chunk stays in
    cache while up to :data:`_MASKS_PER_PASS` streams are added into it, in one scratch buffer.
    Reducing each chunk at the end gives the same words as reducing after every mask."""
    mask = np.uint32((1 << bits) - 1) if bits < 32 else None
    scratch_bytes = bytearray(CHUNK_BYTES)  # the one scratch buffer, reused every chunk
    scratch_view = memoryview(scratch_bytes)
    scratch = np.frombuffer(scratch_bytes, dtype=_LE_U32)
    n = words.shape[0]
    for first in range(0, max(len(keys), 1), _MASKS_PER_PASS):
        batch = [(_Keystream(k, 4 * n), np.subtract if sub else np.add)
                 for k, sub in keys[first : first + _MASKS_PER_PASS]]
        last = first + _MASKS_PER_PASS >= len(keys)
        for start in range(0, n, _WORDS_PER_CHUNK):
            stop = min(start + _WORDS_PER_CHUNK, n)
            m = stop - start
            dst, src, view = words[start:stop], scratch[:m], scratch_view[: 4 * m]
            for stream, op in batch:
                stream.into(view)
                op(dst, src, out=dst)
            if mask is not None and last:
                np.bitwise_and(dst, mask, out=dst)


def add_masks_into(
    out: npt.NDArray[np.uint32],
    masks: Sequence[tuple[MaskPRG, bool]],
    *,
    bits: int,
    workers: int = 1,
) -> None:
    """Add (or, where the flag is True, subtract) every mask of ``masks`` into ``out``, mod
    ``2^bits``: the same words as one :meth:`MaskPRG.add_into` per mask, in one pass over ``out``.

    ``workers > 1`` splits the masks over that many threads, each adding into its own
    zeroed vector (the first into ``out``), summed at the end; it is used only where each
    thread gets at least 2^22 keystream words, and the result is the same.

    Raises:
        TypeError: ``out`` is not a uint32 ndarray, a mask is not ``(MaskPRG, bool)``, or
            ``bits`` / ``workers`` is not an int.
        ValueError: ``out`` is not 1-D, C-contiguous and writeable, ``bits`` is not in
            [1, 32], or ``workers < 1``.
    """
    words = _check_words("out", out)
    check_int("bits", bits, lo=1, hi=32)
    check_int("workers", workers, lo=1)
    keys: list[tuple[bytes, bool]] = []
    for i, item in enumerate(masks):
        if (not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], MaskPRG)
                or not isinstance(item[1], bool)):
            raise TypeError(f"masks[{i}] must be a (MaskPRG, bool) pair")
        keys.append((item[0]._key, item[1]))
    n = words.shape[0]
    workers = max(1, min(workers, len(keys), n * len(keys) // _MIN_WORDS_PER_WORKER))
    if workers == 1:
        _add_streams(words, keys, bits)
        return
    parts = [keys[i::workers] for i in range(workers)]
    extra = [np.zeros(n, dtype=np.uint32) for _ in parts[1:]]
    with ThreadPoolExecutor(max_workers=workers - 1) as pool:
        futures = [pool.submit(_add_streams, acc, part, 32)
                   for acc, part in zip(extra, parts[1:], strict=True)]
        _add_streams(words, parts[0], 32)
        for f in futures:
            f.result()
    for acc in extra:
        np.add(words, acc, out=words)
    if bits < 32:
        np.bitwise_and(words, np.uint32((1 << bits) - 1), out=words)


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

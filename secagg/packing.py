"""Dense bit packing of ring elements: ``bits`` bits per value, no padding between values.

Value ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of a little-endian bit stream (bit ``k`` is
bit ``k % 8`` of byte ``k // 8``), so ``bits = 20`` costs 2.5 bytes per value and a masked
vector crosses the wire in the fewest whole bits its ring needs. Unused bits of the last byte
are zero, and :func:`unpack` insists on it, so each vector has exactly one encoding.

Vectorised: values are taken ``g = 8 / gcd(bits, 8)`` at a time, a block of ``bits * g / 8``
whole bytes. Each lane of a block is shifted (in uint64) into place inside the block's
little-endian uint64 words, and the words' leading bytes are the block. No per-value loop.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg._check import check_bytes, check_int

__all__ = ["pack", "packed_size", "unpack"]

_FAST: dict[int, np.dtype[Any]] = {8: np.dtype("<u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")}


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for ``count`` values of ``bits`` bits: ``ceil(count * bits / 8)``.

    Raises:
        TypeError: ``count`` or ``bits`` is not an int.
        ValueError: ``count < 0`` or ``bits`` not in [1, 32].
    """
    check_int("count", count, lo=0)
    check_int("bits", bits, lo=1, hi=32)
    return (count * bits + 7) // 8


@dataclass(frozen=True)
class _Layout:
    """How ``g`` values of ``bits`` bits sit in one block of ``block`` bytes.

    ``lanes[j] = (word, shift, spills)``: value ``j`` starts at bit ``shift`` of uint64 word
    ``word`` of the block and, if ``spills``, continues at the bottom of the next word.
    ``record`` is a packed structured dtype of ``block`` bytes whose fields (8, 4, 2 or 1
    bytes, none crossing a word) let numpy move whole blocks at once;
    ``fields[k] = (name, word, shift)`` says which bits of which word each field holds.
    """

    g: int
    block: int
    nw: int
    lanes: tuple[tuple[int, int, bool], ...]
    fields: tuple[tuple[str, int, int], ...]
    record: np.dtype[np.void]


@functools.lru_cache(maxsize=32)
def _layout(bits: int) -> _Layout:
    g = 8 // math.gcd(bits, 8)
    block = bits * g // 8
    lanes = []
    for j in range(g):
        word, shift = divmod(j * bits, 64)
        lanes.append((word, shift, shift + bits > 64))
    names, formats, offsets, fields = [], [], [], []
    offset = 0
    while offset < block:
        size = next(s for s in (8, 4, 2, 1) if s <= block - offset and offset % 8 + s <= 8)
        name = f"f{offset}"
        names.append(name)
        formats.append(f"<u{size}")
        offsets.append(offset)
        fields.append((name, offset // 8, 8 * (offset % 8)))
        offset += size
    record = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": block})
    return _Layout(g, block, (block + 7) // 8, tuple(lanes), tuple(fields), record)


def pack(values: npt.NDArray[np.uint32], bits: int) -> bytes:
    """Pack uint32 values, each below ``2^bits``, into ``packed_size(len(values), bits)`` bytes.

    Raises:
        TypeError: ``values`` is not a uint32 ndarray, or ``bits`` not an int.
        ValueError: ``values`` is not 1-D, ``bits`` not in [1, 32], or a value is
            ``>= 2^bits`` (the message gives the first offending index).
    """
    if not isinstance(values, np.ndarray):
        raise TypeError(f"values must be a numpy.ndarray, got {type(values).__name__}")
    if values.dtype != np.uint32:
        raise TypeError(f"values must have dtype uint32, got {values.dtype}")
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got {values.ndim} dimensions")
    check_int("bits", bits, lo=1, hi=32)
    count = values.shape[0]
    if count == 0:
        return b""
    if bits < 32 and int(values.max()) >> bits:
        i = int(np.argmax(values >> np.uint32(bits)))
        raise ValueError(
            f"values must be < 2^{bits}: values[{i}] = {int(values[i])} does not fit in bits={bits}"
        )
    fast = _FAST.get(bits)
    if fast is not None:
        return values.astype(fast, copy=False).tobytes()

    lay = _layout(bits)
    full = count // lay.g
    body = _pack_blocks(values[: full * lay.g].reshape(full, lay.g), lay)
    if full * lay.g == count:
        return body
    tail = np.zeros((1, lay.g), dtype=np.uint32)
    tail[0, : count - full * lay.g] = values[full * lay.g :]
    return body + _pack_blocks(tail, lay)[: packed_size(count, bits) - len(body)]


def _pack_blocks(v: npt.NDArray[np.uint32], lay: _Layout) -> bytes:
    """Pack an (nblocks, g) array of values into nblocks * block bytes."""
    nblocks = v.shape[0]
    words = np.zeros((nblocks, lay.nw), dtype=np.uint64)
    tmp = np.empty(nblocks, dtype=np.uint64)
    for j, (word, shift, spills) in enumerate(lay.lanes):
        np.copyto(tmp, v[:, j])
        if spills:  # the high part of the lane starts the next word
            col = words[:, word + 1]
            np.bitwise_or(col, tmp >> np.uint64(64 - shift), out=col)
        np.left_shift(tmp, np.uint64(shift), out=tmp)  # bits shifted past 63 are dropped
        col = words[:, word]
        np.bitwise_or(col, tmp, out=col)
    out = np.empty(nblocks, dtype=lay.record)
    for name, word, shift in lay.fields:
        np.right_shift(words[:, word], np.uint64(shift), out=tmp)
        np.copyto(out[name], tmp, casting="unsafe")  # keeps the field's low bytes
    return out.tobytes()


def unpack(data: bytes | bytearray | memoryview, bits: int, count: int) -> npt.NDArray[np.uint32]:
    """Inverse of :func:`pack`: read ``count`` values of ``bits`` bits from ``data``.

    Raises:
        TypeError: ``data`` is not bytes-like, or ``bits`` / ``count`` not an int.
        ValueError: ``bits`` not in [1, 32], ``count < 0``, ``len(data)`` is not exactly
            ``packed_size(count, bits)``, or the unused bits of the last byte are not zero.
    """
    data = check_bytes("data", data)
    check_int("bits", bits, lo=1, hi=32)
    check_int("count", count, lo=0)
    size = packed_size(count, bits)
    if len(data) != size:
        raise ValueError(
            f"data must be exactly {size} bytes for count={count} values of bits={bits}, "
            f"got {len(data)}"
        )
    if count == 0:
        return np.empty(0, dtype=np.uint32)
    raw = np.frombuffer(data, dtype=np.uint8)
    spare = size * 8 - count * bits
    if spare and int(raw[-1]) >> (8 - spare):
        raise ValueError(f"data has non-zero padding in its last {spare} bit(s)")
    fast = _FAST.get(bits)
    if fast is not None:
        return raw.view(fast).astype(np.uint32)

    lay = _layout(bits)
    nblocks = -(-count // lay.g)
    full = size // lay.block
    out = np.empty((nblocks, lay.g), dtype=np.uint32)
    _unpack_blocks(np.frombuffer(data, dtype=lay.record, count=full), out[:full], bits, lay)
    if full < nblocks:
        tail = data[full * lay.block :].ljust(lay.block, b"\0")
        _unpack_blocks(np.frombuffer(tail, dtype=lay.record), out[full:], bits, lay)
    flat = out.reshape(-1)
    return flat if nblocks * lay.g == count else flat[:count].copy()


def _unpack_blocks(
    rec: npt.NDArray[np.void], out: npt.NDArray[np.uint32], bits: int, lay: _Layout
) -> None:
    """Unpack ``len(rec)`` packed blocks into the (nblocks, g) array ``out``."""
    nblocks = rec.shape[0]
    words = np.empty((nblocks, lay.nw), dtype=np.uint64)
    tmp = np.empty(nblocks, dtype=np.uint64)
    for name, word, shift in lay.fields:
        col = words[:, word]
        if shift == 0:  # the first field of each word
            np.copyto(col, rec[name])
        else:
            np.copyto(tmp, rec[name])
            np.left_shift(tmp, np.uint64(shift), out=tmp)
            np.bitwise_or(col, tmp, out=col)
    mask = np.uint64((1 << bits) - 1)
    for j, (word, shift, spills) in enumerate(lay.lanes):
        np.right_shift(words[:, word], np.uint64(shift), out=tmp)
        if spills:
            np.bitwise_or(tmp, words[:, word + 1] << np.uint64(64 - shift), out=tmp)
        np.bitwise_and(tmp, mask, out=tmp)
        np.copyto(out[:, j], tmp, casting="unsafe")

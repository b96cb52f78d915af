"""Dense bit packing of ring elements: ``bits`` bits per value, no padding between values.

Value ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of a little-endian bit stream (bit ``k`` is
bit ``k % 8`` of byte ``k // 8``), so ``bits = 20`` costs 2.5 bytes per value and a masked
vector crosses the wire in the fewest whole bits its ring needs. Unused bits of the last byte
are zero, and :func:`unpack` insists on it, so each vector has exactly one encoding.

Vectorised, no per-value loop. Positions repeat every block of ``g`` values and
``g * bits / 8`` whole bytes, so value ``j`` of every block (lane ``j``) starts at the same
byte offset and bit shift within its block, and one unaligned strided numpy view reads or
writes lane ``j`` of all blocks at once. Work goes in chunks of whole blocks that stay in cache.

* :func:`unpack` copies the 4 bytes at each lane's offset into place, then shifts every value
  right by its lane's bit shift and masks it, in contiguous passes over the chunk. A value
  that straddles 5 bytes (only for ``bits`` 27 and 29..31) takes its top bits from the next
  lane's 4 bytes, which start right after its own.
* :func:`unpack_add_into` does the same in a scratch chunk and adds it into the caller's
  accumulator: a server summing uploads never builds a whole unpacked vector.
* :func:`pack` writes each block as uint32 words at byte offsets ``0, 4, 8, ...`` (the last
  ending at the block's end), each the OR of the shifted lanes that overlap it: every byte is
  stored whole and never read back, so there is no read-modify-write of unaligned memory.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from secagg._check import check_bytes, check_int

__all__ = ["pack", "packed_size", "unpack", "unpack_add_into"]

_FAST: dict[int, np.dtype[Any]] = {8: np.dtype("<u1"), 16: np.dtype("<u2"), 32: np.dtype("<u4")}
_U32 = np.uint32
_CHUNK = 1 << 16  # values per chunk (256 KiB of uint32): measured best, all passes stay in L2

U32Array = npt.NDArray[np.uint32]


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
    """Where ``g`` values of ``bits`` bits sit in one block of ``block`` bytes.

    ``lanes[j] = (offset, shift)``: value ``j`` starts at bit ``shift`` (< 8) of byte
    ``offset`` of its block. ``words[k] = (offset, ((lane, shift), ...))``: the uint32 word at
    byte ``offset`` of a block is the OR of those lanes shifted left (negative: right).
    ``chunk``: blocks per chunk.
    """

    bits: int
    g: int
    block: int
    chunk: int
    lanes: tuple[tuple[int, int], ...]
    words: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]


@functools.lru_cache(maxsize=32)
def _layout(bits: int, min_block: int) -> _Layout:
    """The layout of ``bits``-bit values in the smallest block of at least ``min_block`` bytes."""
    g = 8 // math.gcd(bits, 8)
    while g * bits < 8 * min_block:
        g *= 2
    block = g * bits // 8
    lanes = tuple(divmod(j * bits, 8) for j in range(g))
    starts = [*range(0, block - 3, 4)] + ([block - 4] if block % 4 else [])
    words = tuple(
        (o, tuple((j, j * bits - 8 * o) for j in range(g) if -bits < j * bits - 8 * o < 32))
        for o in starts
    )
    return _Layout(bits, g, block, max(1, _CHUNK // g), lanes, words)


@functools.lru_cache(maxsize=8)
def _unpack_tables(bits: int) -> tuple[U32Array | None, U32Array | None]:
    """Per-value tables for one chunk of :func:`unpack` (read only, ``None`` if all zero).

    ``shifts``: each value's lane shift. ``spill``: ``2^(32 - shift)`` for values that reach
    past the 4 bytes at their offset, whose missing top bits are the low bits of the next
    lane's 4 bytes (it starts 4 bytes on), 0 for the others.
    """
    lay = _layout(bits, 1)
    shifts = np.array([s for _, s in lay.lanes], dtype=np.int64)
    spill = np.where(shifts + bits > 32, 1 << (32 - shifts), 0)  # 2^(32-s) < 2^32 where used
    return _tile(shifts, lay.chunk), _tile(spill, lay.chunk)


def _tile(lane_values: npt.NDArray[np.int64], reps: int) -> U32Array | None:
    if not lane_values.any():
        return None
    tiled = np.tile(lane_values.astype(_U32), reps)
    tiled.setflags(write=False)
    return tiled


def pack(values: U32Array, bits: int) -> bytes:
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
    fast = _FAST.get(bits)
    if fast is not None:
        _check_range(values, bits, 0)
        return values.astype(fast, copy=False).tobytes()
    lay = _layout(bits, 4)  # a block's uint32 words must not reach into the next block
    # Build the result inside a BytesIO: getvalue() then hands over its bytes without the
    # copy (and fresh allocation) that ndarray.tobytes() would cost.
    buf = io.BytesIO()
    buf.seek(-(-count // lay.g) * lay.block - 1)
    buf.write(b"\0")
    view = buf.getbuffer()
    _pack_into(np.frombuffer(view, dtype=np.uint8), values, lay)
    view.release()  # no array may still export the buffer
    buf.truncate(packed_size(count, bits))
    return buf.getvalue()


def _check_range(v: U32Array, bits: int, base: int) -> None:
    """Raise unless every value of ``v`` (``values[base:]``) is below ``2^bits``."""
    if bits < 32 and v.shape[0] and int(v.max()) >> bits:
        i = int(np.argmax(v >> _U32(bits) != 0))  # the first offending value
        raise ValueError(
            f"values must be < 2^{bits}: values[{base + i}] = {int(v[i])} "
            f"does not fit in bits={bits}"
        )


def _pack_into(out: npt.NDArray[np.uint8], values: U32Array, lay: _Layout) -> None:
    """Pack ``values`` into ``out``, one byte block per ``g`` values (the last zero-filled)."""
    g, chunk, count = lay.g, lay.chunk, values.shape[0]
    nblocks, full = -(-count // g), count // g
    dst = [np.ndarray((nblocks,), "<u4", out, o, (lay.block,)) for o, _ in lay.words]
    rows = np.empty((g, min(chunk, nblocks)), dtype=_U32)
    tmp = np.empty((2, rows.shape[1]), dtype=_U32)
    for k in range(0, full, chunk):
        src = values[k * g : min(k + chunk, full) * g]
        _check_range(src, lay.bits, k * g)
        _pack_blocks(src.reshape(-1, g), k, lay, dst, rows, tmp)
    if full < nblocks:
        last = np.zeros((1, g), dtype=_U32)
        last[0, : count - full * g] = values[full * g :]
        _check_range(last[0], lay.bits, full * g)
        _pack_blocks(last, full, lay, dst, rows, tmp)


def _pack_blocks(
    src: U32Array, first: int, lay: _Layout, dst: list[U32Array], rows: U32Array, tmp: U32Array
) -> None:
    """Store the (n, g) values ``src`` as blocks ``first .. first + n`` through ``dst``."""
    n = src.shape[0]
    r, word, part = rows[:, :n], tmp[0, :n], tmp[1, :n]
    np.copyto(r, src.T)  # lane-major copy: every later pass is contiguous
    for (_, contrib), d in zip(lay.words, dst, strict=True):
        for i, (j, shift) in enumerate(contrib):
            t = part if i else word
            if shift >= 0:
                np.left_shift(r[j], _U32(shift), t)
            else:
                np.right_shift(r[j], _U32(-shift), t)
            if i:
                np.bitwise_or(word, part, word)
        np.copyto(d[first : first + n], word)


def _check_unpack(data: Any, bits: int, count: int) -> npt.NDArray[np.uint8]:
    """Check :func:`unpack`'s arguments; return ``data`` as a read-only uint8 array."""
    data = check_bytes("data", data)
    check_int("bits", bits, lo=1, hi=32)
    check_int("count", count, lo=0)
    size = packed_size(count, bits)
    if len(data) != size:
        raise ValueError(
            f"data must be exactly {size} bytes for count={count} values of bits={bits}, "
            f"got {len(data)}"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    spare = size * 8 - count * bits
    if spare and int(raw[-1]) >> (8 - spare):
        raise ValueError(f"data has non-zero padding in its last {spare} bit(s)")
    return raw


def unpack(data: bytes | bytearray | memoryview, bits: int, count: int) -> U32Array:
    """Inverse of :func:`pack`: read ``count`` values of ``bits`` bits from ``data``.

    Raises:
        TypeError: ``data`` is not bytes-like, or ``bits`` / ``count`` not an int.
        ValueError: ``bits`` not in [1, 32], ``count < 0``, ``len(data)`` is not exactly
            ``packed_size(count, bits)``, or the unused bits of the last byte are not zero.
    """
    raw = _check_unpack(data, bits, count)
    fast = _FAST.get(bits)
    if fast is not None:
        return raw.view(fast).astype(_U32)
    out = np.empty(count, dtype=_U32)
    _unpack_into(out, raw, _layout(bits, 1), add=False)
    return out


def unpack_add_into(
    acc: U32Array, data: bytes | bytearray | memoryview, bits: int, count: int
) -> None:
    """Add the ``count`` values :func:`unpack` would return into ``acc``, in place, mod 2^32.

    Same result as ``np.add(acc, unpack(data, bits, count), out=acc)``, but a chunk at a time
    in cache, never building the unpacked vector. Everything is checked before ``acc`` is
    touched: on an exception ``acc`` is unchanged.

    Raises:
        TypeError: ``acc`` is not a uint32 ndarray, ``data`` is not bytes-like, or ``bits`` /
            ``count`` not an int.
        ValueError: ``acc`` is not a writeable, C-contiguous 1-D array of ``count`` values,
            or anything :func:`unpack` rejects.
    """
    if not isinstance(acc, np.ndarray):
        raise TypeError(f"acc must be a numpy.ndarray, got {type(acc).__name__}")
    if acc.dtype != np.uint32:
        raise TypeError(f"acc must have dtype uint32, got {acc.dtype}")
    raw = _check_unpack(data, bits, count)
    if acc.shape != (count,):
        raise ValueError(f"acc must be 1-D with count={count} values, got shape {acc.shape}")
    if not (acc.flags.writeable and acc.flags.c_contiguous):
        raise ValueError("acc must be writeable and C-contiguous")
    fast = _FAST.get(bits)
    if fast is not None:
        np.add(acc, raw.view(fast), acc)
        return
    _unpack_into(acc, raw, _layout(bits, 1), add=True)


def _unpack_into(target: U32Array, raw: npt.NDArray[np.uint8], lay: _Layout, add: bool) -> None:
    """Unpack ``len(target)`` values from ``raw`` into ``target``, or add them if ``add``.

    Chunks of whole blocks are unpacked straight into ``target``; the others (to add, or
    ending with a last, partial block) go through scratch.
    """
    g, count = lay.g, target.shape[0]
    nblocks, full = -(-count // g), count // g
    blocks = target[: full * g].reshape(full, g)
    scratch = np.empty((2, min(lay.chunk, nblocks) * g), dtype=_U32)
    for first, views in _chunks(raw, lay, nblocks):
        n = views[0].shape[0]
        direct = first + n <= full and not add
        vals = blocks[first : first + n] if direct else scratch[0, : n * g].reshape(n, g)
        _unpack_blocks(views, vals, lay, scratch[1])
        if not direct:
            dst = target[first * g : (first + n) * g]  # shorter for a partial last block
            src = vals.reshape(-1)[: dst.shape[0]]
            if add:
                np.add(dst, src, dst)
            else:
                np.copyto(dst, src)


def _chunks(
    raw: npt.NDArray[np.uint8], lay: _Layout, nblocks: int
) -> Iterator[tuple[int, list[npt.NDArray[np.int32]]]]:
    """``(first block, lane views)`` for chunks of blocks covering ``nblocks`` blocks.

    View ``j`` holds the 4 bytes at lane ``j``'s offset in each block of the chunk, as int32
    (numpy's int32 -> uint32 cast copies unaligned strided data fast, a plain copy does not).
    Blocks whose reads would run past ``raw`` come from a zero-padded copy of the tail.
    """
    safe = max(0, min(nblocks, (raw.shape[0] - lay.lanes[-1][0] - 4) // lay.block + 1))
    if safe:
        lanes = [np.ndarray((safe,), "<i4", raw, o, (lay.block,)) for o, _ in lay.lanes]
        for k in range(0, safe, lay.chunk):
            yield k, [v[k : k + lay.chunk] for v in lanes]
    if safe < nblocks:
        tail = np.zeros((nblocks - safe) * lay.block + 4, dtype=np.uint8)
        rest = raw[safe * lay.block :]
        tail[: rest.shape[0]] = rest
        n = nblocks - safe
        yield safe, [np.ndarray((n,), "<i4", tail, o, (lay.block,)) for o, _ in lay.lanes]


def _unpack_blocks(
    views: list[npt.NDArray[np.int32]], out: U32Array, lay: _Layout, high: U32Array
) -> None:
    """Unpack the blocks whose lanes ``views`` holds into the contiguous (n, g) ``out``.

    ``high`` is scratch of at least ``out.size`` values.
    """
    for j, v in enumerate(views):
        np.copyto(out[:, j], v, casting="unsafe")  # the lane's 4 bytes, bit for bit
    shifts, spill = _unpack_tables(lay.bits)
    flat = out.reshape(-1)  # a view: out is contiguous
    n = flat.shape[0]
    if spill is not None:  # top bits from the next value's 4 bytes (the last lane never spills)
        np.multiply(flat[1:], spill[: n - 1], high[: n - 1])
    if shifts is not None:
        np.right_shift(flat, shifts[:n], flat)
    if spill is not None:
        np.bitwise_or(flat[:-1], high[: n - 1], flat[:-1])
    np.bitwise_and(flat, _U32((1 << lay.bits) - 1), flat)

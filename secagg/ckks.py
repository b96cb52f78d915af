"""CKKS (TenSEAL 0.3.18) for addition-only secure aggregation: encrypt, add, decrypt.

Hazardous layer: explicit parameters (:mod:`secagg.ckks_params`), typed errors, no I/O.

* Contexts (:mod:`secagg.ckks_context`) use symmetric encryption; the server's public context
  holds no key at all. Every chunk carries the context fingerprint, so a chunk from another
  context is refused before use.
* Integers are packed several per slot (:class:`SlotLayout`) and decoded exactly; floats are
  encoded one per slot at the preset's scale.
* A vector of any length becomes ``ceil(count / values_per_ciphertext)`` chunks, each
  ``header || SEAL ciphertext`` (:mod:`secagg.ckks_wire`). Fresh ciphertexts are seeded where
  possible (half size, :mod:`secagg.ckks_seeded`); SEAL compresses with zstd either way.

CKKS ciphertexts are malleable: integrity and origin come from the protocol (AEAD, signatures).
Here, structural damage (truncation, garbage, a wrong header, another context, a wrong count)
raises :class:`CkksError`, and integer decryption also rejects slots that are not close to an
integer or lanes outside the range ``n`` values can reach, which catches a wrong key and most
tampering with high probability. TenSEAL holds the GIL: parallelise with processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

try:
    import tenseal as ts
except ImportError as exc:  # CKKS is an extra: the core install has no TenSEAL
    raise ImportError("CKKS needs TenSEAL: pip install 'secagg[ckks]'") from exc

from secagg.ckks_context import CkksPublicContext, CkksSecretContext
from secagg.ckks_layout import SlotLayout, choose_preset
from secagg.ckks_params import MAX_ROUNDING_ERROR, PRESETS, CkksPreset
from secagg.ckks_wire import (
    KIND_FLOAT,
    KIND_INT,
    ChunkHeader,
    check_seal_header,
    vector_proto,
    vector_proto_ciphertext,
)
from secagg.errors import CkksError, RangeError

__all__ = [
    "PRESETS",
    "CkksPreset",
    "CkksPublicContext",
    "CkksSecretContext",
    "SlotLayout",
    "add_ciphertexts",
    "choose_preset",
    "decrypt_floats",
    "decrypt_ints",
    "encrypt_floats",
    "encrypt_ints",
]


def _max_seal_bytes(preset: CkksPreset) -> int:
    # Up to three polynomials over the whole chain, uncompressed, plus metadata.
    return 3 * preset.poly_modulus_degree * len(preset.coeff_mod_bit_sizes) * 8 + 4096


def _check_seeded(seeded: object) -> None:
    if not isinstance(seeded, bool):
        raise TypeError(f"seeded must be bool, got {type(seeded).__name__}")


def _slot_chunks(slots: np.ndarray[Any, Any], per: int) -> list[np.ndarray[Any, Any]]:
    return [slots[i : i + per] for i in range(0, slots.size, per)]


def encrypt_ints(
    ctx: CkksSecretContext,
    values: np.ndarray[Any, Any],
    layout: SlotLayout,
    *,
    seeded: bool = True,
) -> list[bytes]:
    """Pack signed integers per ``layout`` and encrypt them into as few chunks as possible.

    ``seeded``: serialize fresh ciphertexts with SEAL's PRNG seed in place of their random half
    (half the upload; the server pays about 0.2 ms per ciphertext to expand the seed, N=4096).
    Falls back to full ciphertexts where :func:`secagg.ckks_seeded.seeded_available` is False;
    both forms add and decrypt alike.

    Raises:
        TypeError: wrong argument types (values: 1-D integer numpy array).
        ValueError: empty values, or a layout for another preset.
        RangeError: a value outside the layout's ``value_bits``.
        CkksError: SEAL refused the encoding (cannot happen for a valid layout).
    """
    _check_seeded(seeded)
    if not isinstance(ctx, CkksSecretContext):
        raise TypeError(f"ctx must be CkksSecretContext, got {type(ctx).__name__}")
    if not isinstance(layout, SlotLayout):
        raise TypeError(f"layout must be SlotLayout, got {type(layout).__name__}")
    if layout.preset != ctx.preset:
        raise ValueError(f"layout is for {layout.preset.name}, context is {ctx.preset.name}")
    slots = layout.pack(values).astype(np.float64)  # exact: |slot| < 2^45
    chunks = _slot_chunks(slots, layout.slots_per_ciphertext)
    sealed = ctx.encrypt_chunks(chunks, 2.0**layout.scale_bits, seeded=seeded)
    return [
        _int_header(layout, ctx.fingerprint, i, len(chunks), c.size, 1).encode(ct)
        for i, (c, ct) in enumerate(zip(chunks, sealed, strict=True))
    ]


def encrypt_floats(
    ctx: CkksSecretContext, values: np.ndarray[Any, Any], *, seeded: bool = True
) -> list[bytes]:
    """Encrypt floats one per slot at the (float) preset's scale.

    The preset comes from ``ctx``; the sum of all contributions must stay within
    ``ctx.preset.float_max_abs`` (checked per contribution only). ``seeded`` as for
    :func:`encrypt_ints`.

    Raises:
        TypeError: wrong types (values: 1-D float numpy array).
        ValueError: integer preset, empty, NaN/inf, or a magnitude above ``float_max_abs``
            (:class:`RangeError`).
        CkksError: SEAL refused the encoding.
    """
    _check_seeded(seeded)
    if not isinstance(ctx, CkksSecretContext):
        raise TypeError(f"ctx must be CkksSecretContext, got {type(ctx).__name__}")
    preset = ctx.preset
    if preset.scale_bits is None:
        raise ValueError(f"preset {preset.name!r} is an integer preset; use encrypt_ints")
    x = _as_float64(values)
    if float(np.abs(x).max()) > preset.float_max_abs:
        raise RangeError(f"|values| must be <= {preset.float_max_abs} for {preset.name}")
    chunks = _slot_chunks(x, preset.slots)
    sealed = ctx.encrypt_chunks(chunks, 2.0**preset.scale_bits, seeded=seeded)
    return [
        ChunkHeader(
            KIND_FLOAT, 0, 0, 1, preset.scale_bits, i, len(chunks), c.size, 1, 0, ctx.fingerprint
        ).encode(ct)
        for i, (c, ct) in enumerate(zip(chunks, sealed, strict=True))
    ]


def add_ciphertexts(pub: CkksPublicContext, batches: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Server side: add the chunk lists of several contributions, position by position.

    Needs only the public context. The result's ``terms`` is the sum of the inputs' terms.
    Each batch may be any same slice of the contributions' chunk lists (``b[k:m]`` for every
    ``b``), so the work can be split across worker processes; decryption checks the complete
    order and count.

    Raises:
        TypeError: wrong argument types.
        ValueError: no batches.
        CkksError: batches of different lengths, malformed or truncated chunks, chunks from
            another context, layout or position, or more summands than ``n_max``.
    """
    if not isinstance(pub, CkksPublicContext):
        raise TypeError(f"pub must be CkksPublicContext, got {type(pub).__name__}")
    if isinstance(batches, (bytes, str)) or not isinstance(batches, Sequence):
        raise TypeError("batches must be a sequence of chunk lists")
    if len(batches) == 0:
        raise ValueError("batches must not be empty")
    for batch in batches:
        if isinstance(batch, (bytes, str)) or not isinstance(batch, Sequence):
            raise TypeError("each batch must be a sequence of bytes chunks")
        if not all(isinstance(c, bytes) for c in batch):
            raise TypeError("chunks must be bytes")
    total = len(batches[0])
    if total == 0 or any(len(b) != total for b in batches):
        raise CkksError("every contribution must have the same, non-zero number of chunks")
    out = []
    for i in range(total):
        parsed = [_parse_chunk(pub.preset, pub.fingerprint, b[i], position=i) for b in batches]
        first = parsed[0][0]
        if not all(h.same_stream(first) for h, _ in parsed):
            raise CkksError(f"chunk {i}: contributions disagree on layout, scale or slot count")
        terms = sum(h.terms for h, _ in parsed)
        if terms > (first.n_max if first.kind == KIND_INT else 2**32 - 1):
            raise CkksError(f"chunk {i}: {terms} summands exceed n_max={first.n_max}")
        try:
            acc = _load_vector(pub.tenseal_context(), first, parsed[0][1])
            for h, payload in parsed[1:]:
                acc.add_(_load_vector(pub.tenseal_context(), h, payload))
            summed = vector_proto_ciphertext(acc.serialize())
        except CkksError:
            raise
        except Exception as exc:
            raise CkksError(f"chunk {i}: SEAL refused the addition") from exc
        out.append(replace(first, terms=terms).encode(summed))
    return out


def decrypt_ints(
    ctx: CkksSecretContext, cts: Sequence[bytes], *, count: int, layout: SlotLayout, n: int
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Decrypt a sum of ``n`` integer encryptions exactly (int64 lane sums, length ``count``).

    Raises:
        TypeError: wrong argument types.
        ValueError: ``count`` < 1, ``n`` outside [1, n_max], layout of another preset.
        CkksError: wrong number of chunks, a chunk from another context, layout or position,
            ``terms != n``, or decrypted slots that are not a valid packing (wrong key,
            tampering, too much noise).
    """
    if not isinstance(ctx, CkksSecretContext):
        raise TypeError(f"ctx must be CkksSecretContext, got {type(ctx).__name__}")
    if not isinstance(layout, SlotLayout):
        raise TypeError(f"layout must be SlotLayout, got {type(layout).__name__}")
    if layout.preset != ctx.preset:
        raise ValueError(f"layout is for {layout.preset.name}, context is {ctx.preset.name}")
    n_slots = layout.slots_for(count)
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError("n must be int")
    if not 1 <= n <= layout.n_max:
        raise ValueError(f"n must be in [1, {layout.n_max}], got {n}")
    per = layout.slots_per_ciphertext
    expected = [
        _int_header(layout, ctx.fingerprint, i, -(-n_slots // per), min(per, n_slots - i * per), n)
        for i in range(-(-n_slots // per))
    ]
    x = _decrypt_all(ctx, cts, expected)
    rounded = np.rint(x)
    if not np.all(np.abs(x - rounded) <= MAX_ROUNDING_ERROR) or not np.all(
        np.abs(rounded) < 2.0**layout.payload_bits
    ):
        raise CkksError("decrypted slots are not a valid packing (wrong key, tampering or noise)")
    try:
        return layout.unpack(rounded.astype(np.int64), count=count, n=n)
    except RangeError as exc:
        raise CkksError(f"decrypted slots are not a valid packing: {exc}") from exc


def decrypt_floats(
    ctx: CkksSecretContext, cts: Sequence[bytes], *, count: int, n: int
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Decrypt a sum of ``n`` float encryptions (float64, length ``count``).

    Raises:
        TypeError: wrong argument types.
        ValueError: integer preset, ``count`` or ``n`` < 1.
        CkksError: wrong number of chunks, a chunk from another context or position,
            ``terms != n``, or undecryptable chunks.
    """
    if not isinstance(ctx, CkksSecretContext):
        raise TypeError(f"ctx must be CkksSecretContext, got {type(ctx).__name__}")
    preset = ctx.preset
    if preset.scale_bits is None:
        raise ValueError(f"preset {preset.name!r} is an integer preset; use decrypt_ints")
    for name, v in (("count", count), ("n", n)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must be int")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    per = preset.slots
    total = -(-count // per)
    expected = [
        ChunkHeader(
            KIND_FLOAT,
            0,
            0,
            1,
            preset.scale_bits,
            i,
            total,
            min(per, count - i * per),
            n,
            0,
            ctx.fingerprint,
        )
        for i in range(total)
    ]
    return _decrypt_all(ctx, cts, expected)


def _int_header(
    layout: SlotLayout, fingerprint: bytes, index: int, total: int, slots: int, terms: int
) -> ChunkHeader:
    return ChunkHeader(
        KIND_INT,
        layout.value_bits,
        layout.lane_bits,
        layout.lanes_per_slot,
        layout.scale_bits,
        index,
        total,
        slots,
        terms,
        layout.n_max,
        fingerprint,
    )


def _parse_chunk(
    preset: CkksPreset,
    fingerprint: bytes,
    chunk: bytes,
    *,
    position: int,
    index: int | None = None,
    total: int | None = None,
) -> tuple[ChunkHeader, bytes]:
    """Header and SEAL bytes of the chunk at ``position``, checked against the context (and
    against ``index``/``total`` when given)."""
    h, payload = ChunkHeader.decode(chunk)
    if h.fingerprint != fingerprint:
        raise CkksError(f"chunk {position}: ciphertext from another context (fingerprint differs)")
    if (index is not None and h.index != index) or (total is not None and h.total != total):
        raise CkksError(f"chunk {position}: header says chunk {h.index} of {h.total}")
    full = h.index < h.total - 1
    if h.slots > preset.slots or (full and h.slots != preset.slots):
        raise CkksError(f"chunk {position}: {h.slots} slots where {preset.slots} fit")
    check_seal_header(payload, max_bytes=_max_seal_bytes(preset))
    return h, payload


def _load_vector(tenseal_context: Any, h: ChunkHeader, payload: bytes) -> Any:
    proto = vector_proto(payload, slots=h.slots, scale=2.0**h.scale_bits)
    try:
        return ts.ckks_vector_from(tenseal_context, proto)
    except Exception as exc:
        raise CkksError(f"chunk {h.index}: SEAL refused the ciphertext") from exc


def _decrypt_all(
    ctx: CkksSecretContext, cts: Sequence[bytes], expected: list[ChunkHeader]
) -> np.ndarray[Any, np.dtype[np.float64]]:
    if isinstance(cts, (bytes, str)) or not isinstance(cts, Sequence):
        raise TypeError("cts must be a sequence of bytes chunks")
    if not all(isinstance(c, bytes) for c in cts):
        raise TypeError("chunks must be bytes")
    if len(cts) != len(expected):
        raise CkksError(f"expected {len(expected)} ciphertext chunks, got {len(cts)}")
    parts = []
    for want, chunk in zip(expected, cts, strict=True):
        h, payload = _parse_chunk(
            ctx.preset,
            want.fingerprint,
            chunk,
            position=want.index,
            index=want.index,
            total=want.total,
        )
        if h != want:
            diff = [k for k in want.__dict__ if getattr(h, k) != getattr(want, k)]
            raise CkksError(f"chunk {want.index}: header differs from expected in {diff}")
        vec = _load_vector(ctx.tenseal_context(), h, payload)
        try:
            values = vec.decrypt()
        except Exception as exc:
            raise CkksError(f"chunk {want.index}: decryption failed") from exc
        parts.append(np.asarray(values, dtype=np.float64))
    x = np.concatenate(parts)
    if not np.all(np.isfinite(x)):
        raise CkksError("decryption produced non-finite values")
    return x


def _as_float64(values: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    if not isinstance(values, np.ndarray):
        raise TypeError(f"values must be a numpy array, got {type(values).__name__}")
    if values.ndim != 1 or values.dtype not in (np.float32, np.float64):
        raise TypeError(f"values must be 1-D float32/float64, got {values.dtype} {values.shape}")
    if values.size == 0:
        raise ValueError("values must not be empty")
    if not np.all(np.isfinite(values)):
        raise ValueError("values contain NaN or inf")
    return values.astype(np.float64, copy=False)

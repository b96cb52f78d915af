"""Byte formats of the CKKS layer: chunk headers, context envelopes, and the few protobuf fields
of TenSEAL's own formats that we read or write.

A chunk on the wire is ``ChunkHeader || SEAL ciphertext``. We never pass a peer's TenSEAL
protobuf to TenSEAL: its ``CKKSVector`` trusts the ``sizes`` field when decrypting (an index
past the end reads out of bounds). Instead we rebuild the protobuf ourselves from validated
header fields, so the only untrusted bytes TenSEAL sees are a SEAL ciphertext, which SEAL loads
with full validation against the context (after our header and length checks).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from secagg.errors import CkksError

__all__ = [
    "CHUNK_HEADER_BYTES",
    "CONTEXT_ID_BYTES",
    "KIND_FLOAT",
    "KIND_INT",
    "ChunkHeader",
    "check_seal_header",
    "context_proto_field",
    "context_proto_int",
    "decode_envelope",
    "encode_envelope",
    "vector_proto",
    "vector_proto_ciphertext",
]

_CHUNK_MAGIC = b"SAck"
_VERSION = 1
KIND_INT = 1
KIND_FLOAT = 2
# magic, version, kind, value_bits, lane_bits, lanes, scale_bits,
# index, total, slots, terms, n_max, context fingerprint
_CHUNK = struct.Struct("<4sBBBBBBIIIII32s")
CHUNK_HEADER_BYTES = _CHUNK.size

# SEALHeader: magic 0xA15E, header size 16, version major/minor, compression mode,
# reserved, total size of the serialized object (header included).
_SEAL = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E
_SEAL_COMPR_MODES = (0, 1, 2)  # none, zlib, zstd


@dataclass(frozen=True)
class ChunkHeader:
    """Metadata that binds one ciphertext chunk to a context, a layout and a position.

    ``terms`` counts the fresh ciphertexts summed into this one (1 when encrypted; the server's
    addition sums them). For float chunks ``value_bits``, ``lane_bits`` and ``n_max`` are 0.
    """

    kind: int
    value_bits: int
    lane_bits: int
    lanes: int
    scale_bits: int
    index: int
    total: int
    slots: int
    terms: int
    n_max: int
    fingerprint: bytes

    def encode(self, ciphertext: bytes) -> bytes:
        """Header followed by the SEAL ciphertext bytes."""
        return (
            _CHUNK.pack(
                _CHUNK_MAGIC,
                _VERSION,
                self.kind,
                self.value_bits,
                self.lane_bits,
                self.lanes,
                self.scale_bits,
                self.index,
                self.total,
                self.slots,
                self.terms,
                self.n_max,
                self.fingerprint,
            )
            + ciphertext
        )

    @staticmethod
    def decode(chunk: bytes) -> tuple[ChunkHeader, bytes]:
        """Split a chunk into its header and SEAL ciphertext bytes (header fields checked for
        internal consistency only; the caller compares them with what it expects).

        Raises:
            CkksError: too short, wrong magic or version, unknown kind, inconsistent fields.
        """
        if len(chunk) < CHUNK_HEADER_BYTES:
            raise CkksError(f"ciphertext chunk too short ({len(chunk)} bytes)")
        fields = _CHUNK.unpack_from(chunk)
        if fields[0] != _CHUNK_MAGIC or fields[1] != _VERSION:
            raise CkksError("not a secagg CKKS chunk (bad magic or version)")
        h = ChunkHeader(*fields[2:])
        if h.kind not in (KIND_INT, KIND_FLOAT):
            raise CkksError(f"unknown chunk kind {h.kind}")
        if not (h.total >= 1 and h.index < h.total and h.slots >= 1 and h.terms >= 1):
            raise CkksError("inconsistent chunk header (index, total, slots or terms)")
        return h, chunk[CHUNK_HEADER_BYTES:]

    def same_stream(self, other: ChunkHeader) -> bool:
        """True when two headers differ at most in ``terms`` (chunks that may be added)."""
        return replace(other, terms=self.terms) == self


def check_seal_header(data: bytes, *, max_bytes: int) -> None:
    """Check the 16-byte SEAL header of a serialized object before SEAL parses it.

    Raises:
        CkksError: too short or too long, bad magic, header size, major version,
            compression mode, or a size field that does not equal the byte count.
    """
    if len(data) < _SEAL.size or len(data) > max_bytes:
        raise CkksError(f"SEAL object of {len(data)} bytes outside [{_SEAL.size}, {max_bytes}]")
    magic, hsize, major, _minor, compr, _reserved, size = _SEAL.unpack_from(data)
    if magic != _SEAL_MAGIC or hsize != _SEAL.size or major != 4:
        raise CkksError("not a SEAL 4 serialized object")
    if compr not in _SEAL_COMPR_MODES:
        raise CkksError(f"unknown SEAL compression mode {compr}")
    if size != len(data):
        raise CkksError(f"SEAL object truncated or padded: header says {size}, got {len(data)}")


# --- minimal protobuf (proto3) for TenSEAL's CKKSVectorProto and TenSEALContextProto ---------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(b) or shift > 63:
            raise CkksError("malformed protobuf varint")
        x = b[i]
        i += 1
        value |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return value, i


def _fields(b: bytes) -> tuple[dict[int, bytes], dict[int, int]]:
    """Last value of each length-delimited and each varint field; fixed-width ones skipped."""
    blobs: dict[int, bytes] = {}
    ints: dict[int, int] = {}
    i = 0
    while i < len(b):
        key, i = _read_varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            ints[field], i = _read_varint(b, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _read_varint(b, i)
            if i + length > len(b):
                raise CkksError("truncated protobuf field")
            blobs[field] = b[i : i + length]
            i += length
        else:
            raise CkksError(f"unsupported protobuf wire type {wire}")
    if i != len(b):
        raise CkksError("truncated protobuf message")
    return blobs, ints


def vector_proto(ciphertext: bytes, *, slots: int, scale: float) -> bytes:
    """TenSEAL ``CKKSVectorProto`` holding one ciphertext of ``slots`` values."""
    sizes = _varint(slots)
    return (
        b"\x0a"
        + _varint(len(sizes))
        + sizes
        + b"\x12"
        + _varint(len(ciphertext))
        + ciphertext
        + b"\x19"
        + struct.pack("<d", scale)
    )


def vector_proto_ciphertext(proto: bytes) -> bytes:
    """The single SEAL ciphertext inside a TenSEAL ``CKKSVectorProto``.

    Raises:
        CkksError: malformed, or not exactly one ciphertext.
    """
    i = 0
    found: list[bytes] = []
    while i < len(proto):
        key, i = _read_varint(proto, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, i = _read_varint(proto, i)
            if field == 2:
                found.append(proto[i : i + length])
            i += length
        elif wire == 1:
            i += 8
        elif wire == 0:
            _, i = _read_varint(proto, i)
        else:
            raise CkksError(f"unexpected protobuf wire type {wire}")
    if len(found) != 1 or i != len(proto):
        raise CkksError("expected exactly one ciphertext in the TenSEAL vector")
    return found[0]


def context_proto_field(proto: bytes, *path: int) -> bytes | None:
    """A length-delimited field of a TenSEAL ``TenSEALContextProto`` by field path, or None.

    ``(3, 1)`` is the serialized SEAL secret key (private_context.secret_key).

    Raises:
        CkksError: malformed protobuf.
    """
    data: bytes | None = proto
    for field in path:
        if data is None:
            return None
        data = _fields(data)[0].get(field)
    return data


def context_proto_int(proto: bytes, field: int) -> int | None:
    """A top-level varint field of a TenSEAL ``TenSEALContextProto`` (4: encryption type).

    Raises:
        CkksError: malformed protobuf.
    """
    return _fields(proto)[1].get(field)


# --- context envelopes -----------------------------------------------------------------------

_ENVELOPE = struct.Struct("<4sBB")  # magic, version, preset name length
CONTEXT_ID_BYTES = 32


def encode_envelope(magic: bytes, preset_name: str, context_id: bytes, payload: bytes) -> bytes:
    """``magic || version || len(name) || name || context_id || payload``."""
    name = preset_name.encode("ascii")
    return _ENVELOPE.pack(magic, _VERSION, len(name)) + name + context_id + payload


def decode_envelope(magic: bytes, data: bytes) -> tuple[str, bytes, bytes]:
    """Inverse of :func:`encode_envelope`: (preset name, context id, payload).

    Raises:
        CkksError: too short, wrong magic or version, undecodable name.
    """
    if len(data) < _ENVELOPE.size:
        raise CkksError("CKKS context bytes too short")
    got, version, name_len = _ENVELOPE.unpack_from(data)
    if got != magic or version != _VERSION:
        raise CkksError("not a secagg CKKS context of this kind (bad magic or version)")
    start = _ENVELOPE.size
    end = start + name_len + CONTEXT_ID_BYTES
    if len(data) < end:
        raise CkksError("CKKS context bytes truncated")
    try:
        name = data[start : start + name_len].decode("ascii")
    except UnicodeDecodeError as exc:
        raise CkksError("CKKS context preset name is not ASCII") from exc
    return name, data[start + name_len : end], data[end:]

"""The only code that turns messages into bytes and back.

Layout: a 4-byte header ``b"SA" || version (u8) || type tag (u8)``, then the fields in a fixed
order, all integers big-endian: round id u64, client ids u32, lists as a u32 count followed by
the items, ``(id, bytes)`` pairs as u32 id, u16 length, bytes (u32 length for the CKKS
key-setup ciphertexts), CKKS chunks and contexts as u32 length, bytes. A masked vector is
``count u32 || bits u8 || packed data`` and must be exactly ``packed_size(count, bits)`` bytes
(:mod:`secagg.packing`: ``bits/8`` bytes per value). Nothing may follow the last field.

:func:`decode` either returns a valid message or raises
:class:`secagg.protocols.errors.RemoteProtocolError`; counts are checked against the bytes left
before anything is allocated, so hostile input cannot make it allocate more than its length.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from secagg.protocols.errors import RemoteProtocolError
from secagg.protocols.messages import (
    AdvertiseKeys,
    CkksInput,
    Commitments,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedSum,
    KeyAdvert,
    KeyConfirm,
    KeyDelivery,
    KeyDistribution,
    KeyRoster,
    KeyRosterEntry,
    MaskedInput,
    Message,
    MsgType,
    Reveal,
    Roster,
    RosterEntry,
    ShareKeys,
    SharesRelay,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = ["MAGIC", "WIRE_VERSION", "decode", "encode"]

MAGIC = b"SA"
WIRE_VERSION = 3  # 3: graph-nonce commitments and reveals (SecAgg+ graphs the server cannot grind)
_HEADER = struct.Struct(">2sBB")
_KEY = 32


class _Writer:
    __slots__ = ("parts",)

    def __init__(self, tag: MsgType) -> None:
        self.parts: list[bytes] = [_HEADER.pack(MAGIC, WIRE_VERSION, tag)]

    def pack(self, fmt: str, *values: int) -> None:
        self.parts.append(struct.pack(">" + fmt, *values))

    def raw(self, b: bytes) -> None:
        self.parts.append(b)

    def blob8(self, b: bytes) -> None:
        self.pack("B", len(b))
        self.parts.append(b)

    def ids(self, ids: tuple[int, ...]) -> None:
        self.pack(f"I{len(ids)}I", len(ids), *ids)

    def pairs(self, pairs: tuple[tuple[int, bytes], ...], head: str = "IH") -> None:
        """Count, then per pair its ``head`` (u32 id, u16 or u32 length) and the bytes."""
        self.pack("I", len(pairs))
        for cid, b in pairs:
            self.pack(head, cid, len(b))
            self.parts.append(b)

    def blob32(self, b: bytes) -> None:
        self.pack("I", len(b))
        self.parts.append(b)

    def blobs(self, items: tuple[bytes, ...]) -> None:
        self.pack("I", len(items))
        self.parts += [p for b in items for p in (struct.pack(">I", len(b)), b)]

    def done(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _need(self, n: int) -> int:
        pos = self._pos
        if n < 0 or len(self._data) - pos < n:
            raise RemoteProtocolError("truncated message")
        self._pos = pos + n
        return pos

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return self._data[pos : pos + n]

    def unpack(self, fmt: str) -> tuple[int, ...]:
        s = struct.Struct(">" + fmt)
        return s.unpack_from(self._data, self._need(s.size))

    def u(self, fmt: str) -> int:
        return self.unpack(fmt)[0]

    def blob8(self) -> bytes:
        return self.take(self.u("B"))

    def count(self, item_size: int) -> int:
        c = self.u("I")
        if c * item_size > len(self._data) - self._pos:
            raise RemoteProtocolError("list count exceeds the message length")
        return c

    def ids(self) -> tuple[int, ...]:
        c = self.count(4)
        return self.unpack(f"{c}I")

    def pairs(self, head: str = "IH") -> tuple[tuple[int, bytes], ...]:
        out = []
        for _ in range(self.count(struct.calcsize(">" + head))):
            cid, length = self.unpack(head)
            out.append((cid, self.take(length)))
        return tuple(out)

    def blob32(self) -> bytes:
        return self.take(self.u("I"))

    def blobs(self) -> tuple[bytes, ...]:
        return tuple(self.blob32() for _ in range(self.count(4)))

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._pos)

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise RemoteProtocolError("trailing bytes after the message")


def _enc_advertise(w: _Writer, m: AdvertiseKeys) -> None:
    w.pack("QI", m.round_id, m.sender)
    w.raw(m.c_public + m.s_public + m.commitment)
    w.blob8(m.signature)


def _dec_advertise(r: _Reader) -> AdvertiseKeys:
    rid, sender = r.unpack("QI")
    return AdvertiseKeys(rid, sender, r.take(_KEY), r.take(_KEY), r.take(_KEY), r.blob8())


_FIXED_PAIR = struct.Struct(">I32s")
# The server sends one list of commitments and one of reveals to every client: the same tuple
# object each time, so its encoding is kept (by identity) rather than rebuilt n times.
# One (tuple, bytes) pair, replaced whole: a reader sees an old or a new pair, never a mix.
_last_fixed: list[tuple[object, bytes]] = [(object(), b"")]


def _enc_fixed_pairs(w: _Writer, pairs: tuple[tuple[int, bytes], ...]) -> None:
    """Count, then ``u32 id || 32 bytes`` per pair (commitments and nonces)."""
    last = _last_fixed[0]
    if last[0] is pairs:
        w.parts.append(last[1])
        return
    block = struct.pack(">I", len(pairs)) + b"".join(_FIXED_PAIR.pack(c, b) for c, b in pairs)
    _last_fixed[0] = (pairs, block)
    w.parts.append(block)


def _dec_fixed_pairs(r: _Reader) -> tuple[tuple[int, bytes], ...]:
    count = r.count(_FIXED_PAIR.size)
    return tuple(_FIXED_PAIR.iter_unpack(r.take(count * _FIXED_PAIR.size)))


def _enc_commitments(w: _Writer, m: Commitments) -> None:
    w.pack("Q", m.round_id)
    _enc_fixed_pairs(w, m.commitments)


def _dec_commitments(r: _Reader) -> Commitments:
    return Commitments(r.u("Q"), _dec_fixed_pairs(r))


def _enc_reveal(w: _Writer, m: Reveal) -> None:
    w.pack("QI", m.round_id, m.sender)
    w.raw(m.nonce)


def _dec_reveal(r: _Reader) -> Reveal:
    rid, sender = r.unpack("QI")
    return Reveal(rid, sender, r.take(_KEY))


def _enc_roster(w: _Writer, m: Roster) -> None:
    w.pack("Q", m.round_id)
    w.pack("I", len(m.entries))
    for e in m.entries:
        w.pack("I", e.client_id)
        w.raw(e.c_public + e.s_public)
        w.blob8(e.signature)
    _enc_fixed_pairs(w, m.reveals)


def _dec_roster(r: _Reader) -> Roster:
    rid = r.u("Q")
    entries = []
    for _ in range(r.count(4 + 2 * _KEY + 1)):
        cid = r.u("I")
        entries.append(RosterEntry(cid, r.take(_KEY), r.take(_KEY), r.blob8()))
    return Roster(rid, tuple(entries), _dec_fixed_pairs(r))


def _enc_share_keys(w: _Writer, m: ShareKeys) -> None:
    w.pack("QI", m.round_id, m.sender)
    w.pairs(m.ciphertexts)


def _dec_share_keys(r: _Reader) -> ShareKeys:
    rid, sender = r.unpack("QI")
    return ShareKeys(rid, sender, r.pairs())


def _enc_relay(w: _Writer, m: SharesRelay) -> None:
    w.pack("Q", m.round_id)
    w.pairs(m.ciphertexts)


def _dec_relay(r: _Reader) -> SharesRelay:
    return SharesRelay(r.u("Q"), r.pairs())


def _enc_masked(w: _Writer, m: MaskedInput) -> None:
    w.pack("QIIB", m.round_id, m.sender, m.count, m.bits)
    w.raw(m.data)


def _dec_masked(r: _Reader) -> MaskedInput:
    rid, sender, count, bits = r.unpack("QIIB")
    return MaskedInput(rid, sender, count, bits, r.rest())


def _enc_cons_req(w: _Writer, m: ConsistencyRequest) -> None:
    w.pack("Q", m.round_id)
    w.ids(m.survivors)


def _dec_cons_req(r: _Reader) -> ConsistencyRequest:
    return ConsistencyRequest(r.u("Q"), r.ids())


def _enc_cons_sig(w: _Writer, m: ConsistencySignature) -> None:
    w.pack("QI", m.round_id, m.sender)
    w.blob8(m.signature)


def _dec_cons_sig(r: _Reader) -> ConsistencySignature:
    rid, sender = r.unpack("QI")
    return ConsistencySignature(rid, sender, r.blob8())


def _enc_unmask_req(w: _Writer, m: UnmaskRequest) -> None:
    w.pack("Q", m.round_id)
    w.ids(m.survivors)
    w.ids(m.dropped)
    w.pairs(m.signatures)
    w.pack("I", m.survivor_count)


def _dec_unmask_req(r: _Reader) -> UnmaskRequest:
    return UnmaskRequest(r.u("Q"), r.ids(), r.ids(), r.pairs(), r.u("I"))


def _enc_unmask_resp(w: _Writer, m: UnmaskResponse) -> None:
    w.pack("QI", m.round_id, m.sender)
    w.pairs(m.seed_shares)
    w.pairs(m.key_shares)
    w.pairs(m.noise_seeds)


def _dec_unmask_resp(r: _Reader) -> UnmaskResponse:
    rid, sender = r.unpack("QI")
    return UnmaskResponse(rid, sender, r.pairs(), r.pairs(), r.pairs())


def _enc_key_advert(w: _Writer, m: KeyAdvert) -> None:
    w.pack("QI", m.round_id, m.sender)
    w.raw(m.kx_public)
    w.blob8(m.signature)


def _dec_key_advert(r: _Reader) -> KeyAdvert:
    rid, sender = r.unpack("QI")
    return KeyAdvert(rid, sender, r.take(_KEY), r.blob8())


def _enc_key_roster(w: _Writer, m: KeyRoster) -> None:
    w.pack("QI", m.round_id, len(m.entries))
    for e in m.entries:
        w.pack("I", e.client_id)
        w.raw(e.kx_public)
        w.blob8(e.signature)


def _dec_key_roster(r: _Reader) -> KeyRoster:
    rid = r.u("Q")
    return KeyRoster(rid, tuple(KeyRosterEntry(r.u("I"), r.take(_KEY), r.blob8())
                                for _ in range(r.count(4 + _KEY + 1))))


def _enc_key_dist(w: _Writer, m: KeyDistribution) -> None:
    w.pack("QI", m.round_id, m.sender)
    w.blob32(m.public_context)
    w.blob8(m.signature)
    w.pairs(m.ciphertexts, "II")


def _dec_key_dist(r: _Reader) -> KeyDistribution:
    rid, sender = r.unpack("QI")
    return KeyDistribution(rid, sender, r.blob32(), r.blob8(), r.pairs("II"))


def _enc_key_delivery(w: _Writer, m: KeyDelivery) -> None:
    w.pack("QI", m.round_id, m.leader)
    w.blob32(m.public_context)
    w.blob8(m.signature)
    w.blob32(m.ciphertext)


def _dec_key_delivery(r: _Reader) -> KeyDelivery:
    rid, leader = r.unpack("QI")
    return KeyDelivery(rid, leader, r.blob32(), r.blob8(), r.blob32())


def _enc_key_confirm(w: _Writer, m: KeyConfirm) -> None:
    w.pack("QI", m.round_id, m.sender)
    w.raw(m.fingerprint)


def _dec_key_confirm(r: _Reader) -> KeyConfirm:
    rid, sender = r.unpack("QI")
    return KeyConfirm(rid, sender, r.take(_KEY))


def _enc_ckks_input(w: _Writer, m: CkksInput) -> None:
    w.pack("QI", m.round_id, m.sender)
    w.blobs(m.chunks)
    w.blob8(m.signature)


def _dec_ckks_input(r: _Reader) -> CkksInput:
    rid, sender = r.unpack("QI")
    return CkksInput(rid, sender, r.blobs(), r.blob8())  # arguments evaluate left to right


def _enc_sum(w: _Writer, m: EncryptedSum) -> None:
    w.pack("Q", m.round_id)
    w.ids(m.included)
    w.blobs(m.chunks)
    w.pack("IB", m.mask_count, m.mask_bits)
    w.raw(m.mask_correction)


def _dec_sum(r: _Reader) -> EncryptedSum:
    rid, included, chunks, (count, bits) = r.u("Q"), r.ids(), r.blobs(), r.unpack("IB")
    return EncryptedSum(rid, included, chunks, count, bits, r.rest())


_Encoder = Callable[[_Writer, Message], None]
_CODECS: dict[MsgType, tuple[_Encoder, Callable[[_Reader], Message]]] = {
    MsgType.ADVERTISE_KEYS: (_enc_advertise, _dec_advertise),  # type: ignore[dict-item]
    MsgType.ROSTER: (_enc_roster, _dec_roster),  # type: ignore[dict-item]
    MsgType.SHARE_KEYS: (_enc_share_keys, _dec_share_keys),  # type: ignore[dict-item]
    MsgType.SHARES_RELAY: (_enc_relay, _dec_relay),  # type: ignore[dict-item]
    MsgType.MASKED_INPUT: (_enc_masked, _dec_masked),  # type: ignore[dict-item]
    MsgType.CONSISTENCY_REQUEST: (_enc_cons_req, _dec_cons_req),  # type: ignore[dict-item]
    MsgType.CONSISTENCY_SIGNATURE: (_enc_cons_sig, _dec_cons_sig),  # type: ignore[dict-item]
    MsgType.UNMASK_REQUEST: (_enc_unmask_req, _dec_unmask_req),  # type: ignore[dict-item]
    MsgType.UNMASK_RESPONSE: (_enc_unmask_resp, _dec_unmask_resp),  # type: ignore[dict-item]
    MsgType.KEY_ADVERT: (_enc_key_advert, _dec_key_advert),  # type: ignore[dict-item]
    MsgType.KEY_ROSTER: (_enc_key_roster, _dec_key_roster),  # type: ignore[dict-item]
    MsgType.KEY_DISTRIBUTION: (_enc_key_dist, _dec_key_dist),  # type: ignore[dict-item]
    MsgType.KEY_DELIVERY: (_enc_key_delivery, _dec_key_delivery),  # type: ignore[dict-item]
    MsgType.KEY_CONFIRM: (_enc_key_confirm, _dec_key_confirm),  # type: ignore[dict-item]
    MsgType.CKKS_INPUT: (_enc_ckks_input, _dec_ckks_input),  # type: ignore[dict-item]
    MsgType.ENCRYPTED_SUM: (_enc_sum, _dec_sum),  # type: ignore[dict-item]
    MsgType.COMMITMENTS: (_enc_commitments, _dec_commitments),  # type: ignore[dict-item]
    MsgType.REVEAL: (_enc_reveal, _dec_reveal),  # type: ignore[dict-item]
}


def encode(msg: Message) -> bytes:
    """Serialise a message.

    Raises:
        TypeError: ``msg`` is not a protocol message.
    """
    codec = _CODECS.get(getattr(msg, "TYPE", None))  # type: ignore[arg-type]
    if codec is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    w = _Writer(msg.TYPE)
    codec[0](w, msg)
    return w.done()


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse bytes from a peer into a validated message.

    Raises:
        RemoteProtocolError: anything wrong at all: not bytes, bad magic, unknown version or
            type, truncation, trailing bytes, or a field the message rejects.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) < _HEADER.size:
        raise RemoteProtocolError("message shorter than its header")
    magic, version, tag = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise RemoteProtocolError("bad magic: not a secagg message")
    if version != WIRE_VERSION:
        raise RemoteProtocolError(f"unsupported wire version {version}")
    try:
        codec = _CODECS[MsgType(tag)]
    except ValueError:
        raise RemoteProtocolError(f"unknown message type {tag}") from None
    reader = _Reader(raw)
    reader.take(_HEADER.size)
    try:
        msg = codec[1](reader)
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"invalid {MsgType(tag).name} message: {exc}") from None
    reader.finish()
    return msg

"""The wire codec: round trips, canonical bytes, and a fuzzed decoder that only ever
returns a valid message or raises RemoteProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.packing import packed_size
from secagg.protocols import RemoteProtocolError, wire
from secagg.protocols.context import MAX_CLIENT_ID
from secagg.protocols.messages import (
    SHARE_CIPHERTEXT_BYTES,
    AdvertiseKeys,
    Commitments,
    ConsistencyRequest,
    ConsistencySignature,
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

rounds = st.integers(0, 2**64 - 1)
cids = st.integers(0, MAX_CLIENT_ID) | st.integers(0, 50)
ids = st.lists(cids, unique=True, max_size=6).map(lambda v: tuple(sorted(v)))
keys = st.binary(min_size=32, max_size=32)
sigs = st.just(b"") | st.binary(min_size=64, max_size=64)


def pairs(length: int) -> st.SearchStrategy[tuple[tuple[int, bytes], ...]]:
    blob = st.binary(min_size=length, max_size=length)
    return st.dictionaries(cids, blob, max_size=4).map(lambda d: tuple(sorted(d.items())))


@st.composite
def masked_inputs(draw: st.DrawFn) -> MaskedInput:
    count, bits = draw(st.integers(1, 40)), draw(st.integers(8, 32))
    size = packed_size(count, bits)
    return MaskedInput(draw(rounds), draw(cids), count, bits,
                       draw(st.binary(min_size=size, max_size=size)))


entries = st.builds(RosterEntry, cids, keys, keys, sigs)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(AdvertiseKeys, rounds, cids, keys, keys, keys, sigs),
    st.builds(Commitments, rounds, pairs(32)),
    st.builds(Reveal, rounds, cids, keys),
    st.builds(Roster, rounds,
              st.dictionaries(cids, entries, max_size=3).map(
                  lambda d: tuple(RosterEntry(i, e.c_public, e.s_public, e.signature)
                                  for i, e in sorted(d.items()))),
              pairs(32)),
    st.builds(ShareKeys, rounds, cids, pairs(SHARE_CIPHERTEXT_BYTES)),
    st.builds(SharesRelay, rounds, pairs(SHARE_CIPHERTEXT_BYTES)),
    masked_inputs(),
    st.builds(ConsistencyRequest, rounds, ids),
    st.builds(ConsistencySignature, rounds, cids, st.binary(min_size=64, max_size=64)),
    st.builds(UnmaskRequest, rounds, ids, ids, pairs(64), st.integers(0, 2**20)),
    st.builds(UnmaskResponse, rounds, cids, pairs(33), pairs(33),
              st.dictionaries(st.integers(1, 2**20), st.binary(min_size=32, max_size=32),
                              max_size=4).map(lambda d: tuple(sorted(d.items())))),
)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_round_trip_is_exact(msg: Message) -> None:
    data = wire.encode(msg)
    assert data[:2] == wire.MAGIC and data[2] == wire.WIRE_VERSION and data[3] == msg.TYPE
    assert wire.decode(data) == msg
    assert wire.encode(wire.decode(data)) == data


def _check_decoder(data: bytes) -> None:
    try:
        msg = wire.decode(data)
    except RemoteProtocolError:
        return
    assert wire.encode(msg) == data  # accepted bytes are the canonical encoding


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.binary(max_size=200).map(
    lambda b: b"SA\x02" + bytes([len(b) % 11]) + b))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_decoder(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(wire.encode(draw(messages)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_valid_bytes(data: bytes) -> None:
    _check_decoder(data)


def _valid() -> bytes:
    return wire.encode(ConsistencyRequest(7, (1, 2, 3)))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "header"),
        (b"XX\x01\x06" + _valid()[4:], "magic"),
        (b"SA\x01\x06" + _valid()[4:], "version"),
        (b"SA\x02\x06" + _valid()[4:], "version"),  # before graph commitments: refused
        (b"SA\x03\x63" + _valid()[4:], "unknown message type"),
        (_valid() + b"\x00", "trailing"),
        (_valid()[:-1], "count exceeds"),
        (wire.encode(ConsistencySignature(1, 2, bytes(64)))[:-1], "truncated"),
        (b"SA\x03\x06" + struct.pack(">QI", 7, 2**31), "count exceeds"),
        (wire.encode(ConsistencyRequest(7, (1, 2)))[:-8] + struct.pack(">II", 2, 1), "ascending"),
        (b"SA\x03\x05" + struct.pack(">QIIB", 1, 1, 4, 8) + b"\x00" * 3, "MASKED_INPUT"),
        (b"SA\x03\x05" + struct.pack(">QIIB", 1, 1, 4, 40) + b"\x00" * 20, "bits"),
        (b"SA\x03\x01" + struct.pack(">QI", 1, 1) + bytes(96) + b"\x05abcde", "signature"),
        (b"SA\x03\x12" + struct.pack(">QI", 1, 1) + bytes(31), "truncated"),
        (b"SA\x03\x11" + struct.pack(">QI", 1, 2) + struct.pack(">I", 1) + bytes(32)
         + struct.pack(">I", 0) + bytes(32), "ascending"),
    ],
)
def test_specific_rejections(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        wire.decode(data)


def test_non_bytes_and_non_messages() -> None:
    with pytest.raises(RemoteProtocolError):
        wire.decode("SA")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        wire.encode(object())  # type: ignore[arg-type]
    assert wire.decode(bytearray(_valid())) == wire.decode(memoryview(_valid()))


@pytest.mark.parametrize("bits", [8, 17, 20, 22, 27, 32])
def test_masked_upload_is_bit_packed(bits: int) -> None:
    count = 10_001
    msg = MaskedInput(1, 2, count, bits, bytes(packed_size(count, bits)))
    size = len(wire.encode(msg))
    assert size <= count * bits / 8 + 1 + 21  # ceil + header, round, sender, count, bits


def test_every_type_has_a_codec() -> None:
    assert {m for m in MsgType} == set(wire._CODECS)

"""The wire codec of the CKKS messages: exact round trips and a fuzzed decoder that only ever
returns a valid message or raises RemoteProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secagg.packing import packed_size
from secagg.protocols import RemoteProtocolError, wire
from secagg.protocols.messages import (
    CkksInput,
    EncryptedSum,
    KeyAdvert,
    KeyConfirm,
    KeyDelivery,
    KeyDistribution,
    KeyRoster,
    KeyRosterEntry,
    Message,
    MsgType,
)
from tests.protocols.test_wire import _check_decoder, cids, ids, keys, rounds, sigs

blobs = st.binary(min_size=1, max_size=40)
chunk_lists = st.lists(blobs, min_size=1, max_size=4).map(tuple)


def var_pairs() -> st.SearchStrategy[tuple[tuple[int, bytes], ...]]:
    return st.dictionaries(cids, blobs, max_size=3).map(lambda d: tuple(sorted(d.items())))


@st.composite
def sums(draw: st.DrawFn) -> EncryptedSum:
    included = draw(ids.filter(bool))
    if draw(st.booleans()):
        return EncryptedSum(draw(rounds), included, draw(chunk_lists))
    count, bits = draw(st.integers(1, 30)), draw(st.integers(8, 32))
    data = draw(st.binary(min_size=packed_size(count, bits), max_size=packed_size(count, bits)))
    return EncryptedSum(draw(rounds), included, draw(chunk_lists), count, bits, data)


entries = st.builds(KeyRosterEntry, cids, keys, sigs)
ckks_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(KeyAdvert, rounds, cids, keys, sigs),
    st.builds(KeyRoster, rounds, st.dictionaries(cids, entries, max_size=3).map(
        lambda d: tuple(KeyRosterEntry(i, e.kx_public, e.signature)
                        for i, e in sorted(d.items())))),
    st.builds(KeyDistribution, rounds, cids, blobs, sigs, var_pairs()),
    st.builds(KeyDelivery, rounds, cids, blobs, sigs, st.binary(max_size=40)),
    st.builds(KeyConfirm, rounds, cids, keys),
    st.builds(CkksInput, rounds, cids, chunk_lists, sigs),
    sums(),
)


@settings(max_examples=200, deadline=None)
@given(ckks_messages)
def test_round_trip_is_exact(msg: Message) -> None:
    data = wire.encode(msg)
    assert data[3] == msg.TYPE and wire.decode(data) == msg
    assert wire.encode(wire.decode(data)) == data


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(wire.encode(draw(ckks_messages)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_ckks_bytes(data: bytes) -> None:
    _check_decoder(data)


def _hdr(t: MsgType) -> bytes:
    return wire.MAGIC + bytes([wire.WIRE_VERSION, t])


@pytest.mark.parametrize(("data", "match"), [
    (_hdr(MsgType.CKKS_INPUT) + struct.pack(">QIIB", 1, 2, 0, 0), "1 to"),  # no chunks
    (_hdr(MsgType.CKKS_INPUT) + struct.pack(">QIIIB", 1, 2, 1, 0, 0), "1 to"),  # empty chunk
    (_hdr(MsgType.CKKS_INPUT) + struct.pack(">QIII", 1, 2, 2**30, 5), "count exceeds"),
    (_hdr(MsgType.CKKS_INPUT) + struct.pack(">QIII", 1, 2, 1, 2**31), "truncated"),
    (_hdr(MsgType.CKKS_INPUT) + struct.pack(">QIII", 1, 2, 1, 1) + b"x\x05abcde", "signature"),
    (_hdr(MsgType.ENCRYPTED_SUM) + struct.pack(">QIIII", 1, 0, 1, 1, 0) + b"x"
     + struct.pack(">IB", 0, 0), "empty"),  # nobody included
    (_hdr(MsgType.ENCRYPTED_SUM) + struct.pack(">QIIII", 1, 1, 0, 1, 1) + b"x"
     + struct.pack(">IB", 0, 8), "mask_bits must be 0"),
    (_hdr(MsgType.ENCRYPTED_SUM) + struct.pack(">QIIII", 1, 1, 0, 1, 1) + b"x"
     + struct.pack(">IB", 4, 8) + b"abc", "mask_correction"),
    (_hdr(MsgType.KEY_CONFIRM) + struct.pack(">QI", 1, 2) + bytes(31), "truncated"),
    (_hdr(MsgType.KEY_DELIVERY) + struct.pack(">QII", 1, 2, 5000) + bytes(5000)
     + b"\x00" + struct.pack(">I", 0), "public_context"),
])
def test_specific_ckks_rejections(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        wire.decode(data)


def test_ckks_upload_overhead_is_small() -> None:
    chunks = tuple(bytes(33_000) for _ in range(10))
    assert len(wire.encode(CkksInput(1, 2, chunks))) == 4 + 8 + 4 + 1 + 4 + 10 * (4 + 33_000)

"""The envelope codec: exact round trips, and every malformed input is one typed error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.errors import SecAggError
from secagg.fl_core.errors import EnvelopeError
from secagg.fl_core.transport.envelope import (
    ENVELOPE_VERSION,
    HEADER_BYTES,
    MAGIC,
    SERVER_SENDER,
    Envelope,
    check_frames,
    decode_header,
)
from secagg.protocols.context import MAX_CLIENT_ID, MAX_ROUND_ID

HEAD = struct.Struct(">2sBBQIQ")


def test_layout_is_fixed_big_endian() -> None:
    env = Envelope(round_id=0x0102030405060708, stage=9, sender=0x0A0B0C0D, payload_len=3)
    assert HEADER_BYTES == 24
    assert env.encode() == (
        b"SE\x01\x09" + bytes.fromhex("0102030405060708") + bytes.fromhex("0a0b0c0d")
        + (3).to_bytes(8, "big")
    )


@given(
    st.integers(0, MAX_ROUND_ID),
    st.integers(0, 255),
    st.integers(0, SERVER_SENDER),
    st.binary(max_size=64),
)
def test_round_trip(round_id: int, stage: int, sender: int, payload: bytes) -> None:
    env = Envelope(round_id=round_id, stage=stage, sender=sender, payload_len=len(payload))
    got, view = check_frames([env.encode(), payload])
    assert got == env and bytes(view) == payload
    assert got.from_server == (sender == SERVER_SENDER)


def test_server_sender_is_outside_client_ids() -> None:
    assert SERVER_SENDER == MAX_CLIENT_ID + 1 == 2**32 - 1


@pytest.mark.parametrize(
    ("field", "value", "exc"),
    [
        ("round_id", -1, ValueError),
        ("round_id", MAX_ROUND_ID + 1, ValueError),
        ("stage", 256, ValueError),
        ("sender", 2**32, ValueError),
        ("payload_len", -1, ValueError),
        ("stage", True, TypeError),
        ("round_id", 1.0, TypeError),
    ],
)
def test_local_misuse_is_a_value_or_type_error(field: str, value: object, exc: type) -> None:
    kw: dict[str, object] = {"round_id": 1, "stage": 1, "sender": 1, "payload_len": 0}
    kw[field] = value
    with pytest.raises(exc, match=field):
        Envelope(**kw)  # type: ignore[arg-type]


GOOD = Envelope(round_id=1, stage=2, sender=3, payload_len=4).encode()


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [GOOD],
        [GOOD, b"abcd", b"extra"],
        [GOOD[:-1], b"abcd"],  # short header
        [GOOD + b"\0", b"abcd"],  # long header
        [b"XX" + GOOD[2:], b"abcd"],  # bad magic
        [GOOD[:2] + bytes([ENVELOPE_VERSION + 1]) + GOOD[3:], b"abcd"],  # unknown version
        [GOOD, b"abc"],  # truncated payload
        [GOOD, b"abcde"],  # padded payload
        [HEAD.pack(MAGIC, 1, 2, 1, 3, 2**64 - 1), b"abcd"],  # absurd declared length
        ["not bytes", b"abcd"],
        [GOOD, 1234],
    ],
)
def test_malformed_frames_raise_envelope_error(frames: list) -> None:
    with pytest.raises(EnvelopeError):
        check_frames(frames)


def test_envelope_error_is_typed() -> None:
    assert issubclass(EnvelopeError, SecAggError) and issubclass(EnvelopeError, ValueError)


@given(st.binary(max_size=48))
def test_arbitrary_header_bytes_never_escape_as_other_errors(raw: bytes) -> None:
    try:
        env = decode_header(raw)
    except EnvelopeError:
        return
    assert env.encode() == raw  # accepted only if it is exactly a canonical header


@given(st.lists(st.binary(max_size=40), max_size=4))
def test_arbitrary_frame_lists_never_escape(frames: list[bytes]) -> None:
    try:
        env, view = check_frames(frames)
    except EnvelopeError:
        return
    assert len(frames) == 2 and view.nbytes == env.payload_len


def test_payload_view_is_not_a_copy() -> None:
    payload = bytearray(b"0123")
    _, view = check_frames([GOOD, payload])
    payload[0] = ord("X")
    assert bytes(view) == b"X123"

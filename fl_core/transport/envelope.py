"""The transport envelope: one small, versioned, fixed-size header around opaque bytes.

A message on the wire is exactly two ZeroMQ frames (the ROUTER adds the routing id in front
of them at the server)::

    frame 1: header, 24 bytes, big-endian
             magic b"SE" | version u8 | stage u8 | round u64 | sender u32 | payload length u64
    frame 2: payload, the protocol's wire bytes (protocols.wire.encode), carried opaquely

The payload is its own frame so a large masked vector or ciphertext is sent zero-copy and
received as a view on ZeroMQ's buffer, never re-assembled. The header says how long the
payload must be, so a truncated or padded payload is caught before anyone parses it.
:func:`decode_header` and :func:`check_frames` accept only exactly this; anything else raises
:class:`secagg.fl_core.errors.EnvelopeError` and nothing is allocated in proportion to a length a
peer claims.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from secagg.fl_core.errors import EnvelopeError
from secagg.protocols.context import MAX_CLIENT_ID, MAX_ROUND_ID

__all__ = [
    "ENVELOPE_VERSION",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_STAGE",
    "SERVER_SENDER",
    "Envelope",
    "check_frames",
    "decode_header",
]

MAGIC: Final = b"SE"
ENVELOPE_VERSION: Final = 1
_HEADER: Final = struct.Struct(">2sBBQIQ")
HEADER_BYTES: Final = _HEADER.size  # 24
MAX_STAGE: Final = 0xFF
# Client ids stop at MAX_CLIENT_ID = 2**32 - 2, so the last u32 value is free for the server.
SERVER_SENDER: Final = MAX_CLIENT_ID + 1
assert SERVER_SENDER == 0xFFFF_FFFF  # the u32 sender field must hold it
_MAX_PAYLOAD: Final = 2**63 - 1  # what a u64 may declare and Python may compare; sockets cap it


def _check_uint(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be in [0, {maximum}], got {value}")
    return value


@dataclass(frozen=True, slots=True)
class Envelope:
    """Routing facts about one message: which round and stage, who sent it, how long it is.

    ``sender`` is a client id (``0 .. MAX_CLIENT_ID``) or :data:`SERVER_SENDER`. It is only a
    claim: the server checks it against the Curve key the connection authenticated with.
    """

    round_id: int
    stage: int
    sender: int
    payload_len: int

    def __post_init__(self) -> None:
        """Validate ranges.

        Raises:
            TypeError: a field is not an int (bools are refused).
            ValueError: a field is out of range.
        """
        _check_uint("round_id", self.round_id, MAX_ROUND_ID)
        _check_uint("stage", self.stage, MAX_STAGE)
        _check_uint("sender", self.sender, SERVER_SENDER)
        _check_uint("payload_len", self.payload_len, _MAX_PAYLOAD)

    @property
    def from_server(self) -> bool:
        """True if the sender field names the server."""
        return self.sender == SERVER_SENDER

    def encode(self) -> bytes:
        """Return the 24-byte header frame."""
        return _HEADER.pack(
            MAGIC, ENVELOPE_VERSION, self.stage, self.round_id, self.sender, self.payload_len
        )


def decode_header(frame: bytes | bytearray | memoryview) -> Envelope:
    """Parse a header frame from a peer.

    Raises:
        EnvelopeError: not bytes-like, not exactly :data:`HEADER_BYTES` long, wrong magic or
            version, or a field out of range.
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"header must be bytes, got {type(frame).__name__}")
    if len(frame) != HEADER_BYTES:
        raise EnvelopeError(f"header must be {HEADER_BYTES} bytes, got {len(frame)}")
    try:
        magic, version, stage, round_id, sender, length = _HEADER.unpack(frame)
    except (struct.error, TypeError) as exc:  # e.g. a non-contiguous or multi-dim view
        raise EnvelopeError(f"unreadable header: {exc}") from None
    if magic != MAGIC:
        raise EnvelopeError("bad magic: not a secagg envelope")
    if version != ENVELOPE_VERSION:
        raise EnvelopeError(f"unsupported envelope version {version}")
    try:
        return Envelope(round_id=round_id, stage=stage, sender=sender, payload_len=length)
    except ValueError as exc:
        raise EnvelopeError(f"invalid envelope: {exc}") from None


def check_frames(
    frames: Sequence[bytes | bytearray | memoryview],
) -> tuple[Envelope, memoryview]:
    """Validate a received ``[header, payload]`` pair; return the envelope and a view of the
    payload (no copy).

    Raises:
        EnvelopeError: not exactly two frames, a bad header (see :func:`decode_header`), or a
            payload whose length differs from the one the header declares.
    """
    if len(frames) != 2:
        raise EnvelopeError(f"expected 2 frames (header, payload), got {len(frames)}")
    env = decode_header(frames[0])
    payload = frames[1]
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"payload must be bytes, got {type(payload).__name__}")
    view = memoryview(payload)
    if view.nbytes != env.payload_len:
        raise EnvelopeError(
            f"payload is {view.nbytes} bytes but the header declares {env.payload_len}"
        )
    return env, view

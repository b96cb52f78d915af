"""Field validators and type tags shared by every message module (internal).

Constructors of the message dataclasses call these and raise ``TypeError`` / ``ValueError``;
:mod:`secagg.protocols.wire` turns those into :class:`secagg.protocols.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from secagg import aead, shamir
from secagg.protocols.context import MAX_CLIENT_ID, MAX_ROUND_ID

KEY_BYTES = 32
SIGNATURE_BYTES = 64
NOISE_SEED_BYTES = 32  # one released noise component's seed (keys an AES stream)
COMMITMENT_BYTES = 32  # SHA-256 commitment to a client's graph nonce
NONCE_BYTES = 32  # a client's graph-seed nonce
SHARE_PLAINTEXT_BYTES = 4 + 4 + 2 * shamir.SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + aead.OVERHEAD
MAX_CHUNKS = 2**24  # ciphertext chunks per vector (2^35 values at 2048 per chunk)
MAX_CHUNK_BYTES = 2**22  # one SEAL ciphertext with our header (N=4096 needs about 66 KB)
MAX_CONTEXT_BYTES = 4096  # a keyless public context (134 bytes for N=4096)
MAX_SECRET_BYTES = 2**22  # an AEAD-encrypted secret context (about 63 KB for N=4096)


class MsgType(IntEnum):
    """Wire type tags (one byte)."""

    ADVERTISE_KEYS = 1
    ROSTER = 2
    SHARE_KEYS = 3
    SHARES_RELAY = 4
    MASKED_INPUT = 5
    CONSISTENCY_REQUEST = 6
    CONSISTENCY_SIGNATURE = 7
    UNMASK_REQUEST = 8
    UNMASK_RESPONSE = 9
    KEY_ADVERT = 10
    KEY_ROSTER = 11
    KEY_DISTRIBUTION = 12
    KEY_DELIVERY = 13
    KEY_CONFIRM = 14
    CKKS_INPUT = 15
    ENCRYPTED_SUM = 16
    COMMITMENTS = 17
    REVEAL = 18


def _int(name: str, v: Any, hi: int, lo: int = 0) -> None:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{name} must be int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")


def _bytes(name: str, v: Any, *lengths: int) -> None:
    if not isinstance(v, bytes):
        raise TypeError(f"{name} must be bytes, got {type(v).__name__}")
    if len(v) not in lengths:
        raise ValueError(f"{name} must be {' or '.join(map(str, lengths))} bytes, got {len(v)}")


def _ids(name: str, v: Any) -> None:
    """A tuple of client ids, strictly ascending (so distinct and canonical)."""
    if not isinstance(v, tuple):
        raise TypeError(f"{name} must be a tuple, got {type(v).__name__}")
    if not all(type(x) is int for x in v):  # fast path; the loop names the culprit
        for i, x in enumerate(v):
            _int(f"{name}[{i}]", x, MAX_CLIENT_ID)
    if v and not (0 <= v[0] and v[-1] <= MAX_CLIENT_ID):
        raise ValueError(f"{name} must lie in [0, {MAX_CLIENT_ID}]")
    if not all(map(operator.lt, v, v[1:])):
        raise ValueError(f"{name} must be strictly ascending")


def _id_pairs(name: str, v: Any, check: Callable[[str, Any], None]) -> None:
    """A tuple of (client id, bytes) pairs, ids strictly ascending; ``check`` vets the bytes."""
    if not isinstance(v, tuple):
        raise TypeError(f"{name} must be a tuple, got {type(v).__name__}")
    for i, p in enumerate(v):
        if not isinstance(p, tuple) or len(p) != 2:
            raise TypeError(f"{name}[{i}] must be an (id, bytes) pair")
        check(f"{name}[{i}]", p[1])
    _ids(name, tuple(p[0] for p in v))


def _pairs(name: str, v: Any, length: int) -> None:
    """A tuple of (client id, bytes of ``length``) pairs, ids strictly ascending."""
    _id_pairs(name, v, lambda n, b: _bytes(n, b, length))


def _blob(name: str, v: Any, lo: int, hi: int) -> None:
    if not isinstance(v, bytes):
        raise TypeError(f"{name} must be bytes, got {type(v).__name__}")
    if not lo <= len(v) <= hi:
        raise ValueError(f"{name} must be {lo} to {hi} bytes, got {len(v)}")


def _chunks(name: str, v: Any) -> None:
    """A non-empty tuple of non-empty ciphertext chunks."""
    if not isinstance(v, tuple):
        raise TypeError(f"{name} must be a tuple, got {type(v).__name__}")
    if not 1 <= len(v) <= MAX_CHUNKS:
        raise ValueError(f"{name} must hold 1 to {MAX_CHUNKS} chunks, got {len(v)}")
    for i, c in enumerate(v):
        _blob(f"{name}[{i}]", c, 1, MAX_CHUNK_BYTES)


def _round_sender(m: Any) -> None:
    _int("round_id", m.round_id, MAX_ROUND_ID)
    if hasattr(m, "sender"):
        _int("sender", m.sender, MAX_CLIENT_ID)


def _var_pairs(name: str, v: Any, hi: int) -> None:
    """``(client id, bytes of 1..hi)`` pairs, ids strictly ascending."""
    _id_pairs(name, v, lambda n, b: _blob(n, b, 1, hi))


def _entries(v: Any, cls: type) -> None:
    """A tuple of ``cls`` roster entries, their ``client_id`` strictly ascending."""
    if not isinstance(v, tuple):
        raise TypeError("entries must be a tuple")
    for i, e in enumerate(v):
        if not isinstance(e, cls):
            raise TypeError(f"entries[{i}] must be {cls.__name__}")
    _ids("entries ids", tuple(e.client_id for e in v))

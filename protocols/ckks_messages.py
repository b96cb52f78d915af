"""CKKS messages: key setup (``round_id`` is the key epoch) and encrypted rounds.

Key setup: KeyAdvert, KeyDistribution (the leader only) and KeyConfirm go up; KeyRoster and
KeyDelivery come down. Rounds: CkksInput up, EncryptedSum down. Validated when built, like
every message (:mod:`secagg.protocols.messages`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from secagg.packing import packed_size
from secagg.protocols._fields import (
    KEY_BYTES,
    MAX_CONTEXT_BYTES,
    MAX_SECRET_BYTES,
    SIGNATURE_BYTES,
    MsgType,
    _blob,
    _bytes,
    _chunks,
    _entries,
    _ids,
    _int,
    _round_sender,
    _var_pairs,
)
from secagg.protocols.context import MAX_CLIENT_ID

__all__ = [
    "CkksInput",
    "EncryptedSum",
    "KeyAdvert",
    "KeyConfirm",
    "KeyDelivery",
    "KeyDistribution",
    "KeyRoster",
    "KeyRosterEntry",
]


@dataclass(frozen=True, slots=True)
class KeyAdvert:
    """Client -> server (key setup): its fresh X25519 key for receiving the CKKS key."""

    TYPE: ClassVar[MsgType] = MsgType.KEY_ADVERT
    round_id: int  # the key epoch
    sender: int
    kx_public: bytes
    signature: bytes = b""  # Ed25519 over labels.key_advert_payload in active mode

    def __post_init__(self) -> None:
        _round_sender(self)
        _bytes("kx_public", self.kx_public, KEY_BYTES)
        _bytes("signature", self.signature, 0, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class KeyRosterEntry:
    """One advertised key-setup client, as relayed by the server."""

    client_id: int
    kx_public: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _int("client_id", self.client_id, MAX_CLIENT_ID)
        _bytes("kx_public", self.kx_public, KEY_BYTES)
        _bytes("signature", self.signature, 0, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class KeyRoster:
    """Server -> client (key setup): every advertised client's key; the leader follows."""

    TYPE: ClassVar[MsgType] = MsgType.KEY_ROSTER
    round_id: int
    entries: tuple[KeyRosterEntry, ...]

    def __post_init__(self) -> None:
        _round_sender(self)
        _entries(self.entries, KeyRosterEntry)


@dataclass(frozen=True, slots=True)
class KeyDistribution:
    """Leader -> server: the public context and, per recipient, the AEAD-encrypted secret one."""

    TYPE: ClassVar[MsgType] = MsgType.KEY_DISTRIBUTION
    round_id: int
    sender: int
    public_context: bytes
    signature: bytes
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _round_sender(self)
        _blob("public_context", self.public_context, 1, MAX_CONTEXT_BYTES)
        _bytes("signature", self.signature, 0, SIGNATURE_BYTES)
        _var_pairs("ciphertexts", self.ciphertexts, MAX_SECRET_BYTES)


@dataclass(frozen=True, slots=True)
class KeyDelivery:
    """Server -> client: the leader's message for it (the leader's own: no ciphertext)."""

    TYPE: ClassVar[MsgType] = MsgType.KEY_DELIVERY
    round_id: int
    leader: int
    public_context: bytes
    signature: bytes
    ciphertext: bytes

    def __post_init__(self) -> None:
        _round_sender(self)
        _int("leader", self.leader, MAX_CLIENT_ID)
        _blob("public_context", self.public_context, 1, MAX_CONTEXT_BYTES)
        _bytes("signature", self.signature, 0, SIGNATURE_BYTES)
        _blob("ciphertext", self.ciphertext, 0, MAX_SECRET_BYTES)


@dataclass(frozen=True, slots=True)
class KeyConfirm:
    """Client -> server: it holds the secret context with this fingerprint."""

    TYPE: ClassVar[MsgType] = MsgType.KEY_CONFIRM
    round_id: int
    sender: int
    fingerprint: bytes

    def __post_init__(self) -> None:
        _round_sender(self)
        _bytes("fingerprint", self.fingerprint, KEY_BYTES)


@dataclass(frozen=True, slots=True)
class CkksInput:
    """Client -> server: its (masked, for ckks+mask) vector as CKKS ciphertext chunks."""

    TYPE: ClassVar[MsgType] = MsgType.CKKS_INPUT
    round_id: int
    sender: int
    chunks: tuple[bytes, ...]
    signature: bytes = b""  # Ed25519 over labels.ckks_input_payload in active mode

    def __post_init__(self) -> None:
        _round_sender(self)
        _chunks("chunks", self.chunks)
        _bytes("signature", self.signature, 0, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class EncryptedSum:
    """Server -> client: the encrypted sum of ``included``'s inputs; for ckks+mask also the
    ``mask_count`` ring elements (``mask_bits``, bit-packed) that remove the masks."""

    TYPE: ClassVar[MsgType] = MsgType.ENCRYPTED_SUM
    round_id: int
    included: tuple[int, ...]
    chunks: tuple[bytes, ...]
    mask_count: int = 0
    mask_bits: int = 0
    mask_correction: bytes = b""

    def __post_init__(self) -> None:
        _round_sender(self)
        _ids("included", self.included)
        if not self.included:
            raise ValueError("included must not be empty")
        _chunks("chunks", self.chunks)
        _int("mask_count", self.mask_count, 2**32 - 1)
        if self.mask_count == 0:
            if self.mask_bits != 0 or self.mask_correction != b"":
                raise ValueError("no mask correction: mask_bits must be 0 and the data empty")
            return
        _int("mask_bits", self.mask_bits, 32, lo=8)
        _bytes("mask_correction", self.mask_correction,
               packed_size(self.mask_count, self.mask_bits))

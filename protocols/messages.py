"""One frozen dataclass per protocol step, validated when built.

Fields hold only ints, bytes and tuples (sorted, canonical), never dicts, so a message is
immutable and has exactly one wire encoding. Constructors check types, ranges and exact byte
lengths and raise ``TypeError`` / ``ValueError``; :mod:`secagg.protocols.wire` turns those into
:class:`secagg.protocols.errors.RemoteProtocolError` when the bytes came from a peer.

Client -> server: AdvertiseKeys, Reveal, ShareKeys, MaskedInput, ConsistencySignature,
UnmaskResponse. Server -> client: Commitments, Roster, SharesRelay, ConsistencyRequest,
UnmaskRequest.

CKKS key setup (``round_id`` is the key epoch): KeyAdvert, KeyDistribution (leader) and
KeyConfirm up; KeyRoster and KeyDelivery down. CKKS rounds: CkksInput up, EncryptedSum down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from secagg import shamir
from secagg.packing import packed_size
from secagg.protocols._fields import (
    COMMITMENT_BYTES,
    KEY_BYTES,
    MAX_CHUNK_BYTES,
    MAX_CHUNKS,
    MAX_CONTEXT_BYTES,
    MAX_SECRET_BYTES,
    NOISE_SEED_BYTES,
    NONCE_BYTES,
    SHARE_CIPHERTEXT_BYTES,
    SHARE_PLAINTEXT_BYTES,
    SIGNATURE_BYTES,
    MsgType,
    _bytes,
    _entries,
    _ids,
    _int,
    _pairs,
    _round_sender,
)
from secagg.protocols.ckks_messages import (
    CkksInput,
    EncryptedSum,
    KeyAdvert,
    KeyConfirm,
    KeyDelivery,
    KeyDistribution,
    KeyRoster,
    KeyRosterEntry,
)
from secagg.protocols.context import MAX_CLIENT_ID

__all__ = [
    "COMMITMENT_BYTES",
    "KEY_BYTES",
    "MAX_CHUNKS",
    "MAX_CHUNK_BYTES",
    "MAX_CONTEXT_BYTES",
    "MAX_SECRET_BYTES",
    "NOISE_SEED_BYTES",
    "NONCE_BYTES",
    "SHARE_CIPHERTEXT_BYTES",
    "SHARE_PLAINTEXT_BYTES",
    "SIGNATURE_BYTES",
    "AdvertiseKeys",
    "CkksInput",
    "Commitments",
    "ConsistencyRequest",
    "ConsistencySignature",
    "EncryptedSum",
    "KeyAdvert",
    "KeyConfirm",
    "KeyDelivery",
    "KeyDistribution",
    "KeyRoster",
    "KeyRosterEntry",
    "MaskedInput",
    "Message",
    "MsgType",
    "Reveal",
    "Roster",
    "RosterEntry",
    "ShareKeys",
    "SharesRelay",
    "UnmaskRequest",
    "UnmaskResponse",
]


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Client -> server: its share-encryption (c) and masking (s) X25519 public keys, and
    its commitment to a fresh graph-seed nonce (:func:`secagg.protocols.graph.commitment`)."""

    TYPE: ClassVar[MsgType] = MsgType.ADVERTISE_KEYS
    round_id: int
    sender: int
    c_public: bytes
    s_public: bytes
    commitment: bytes
    signature: bytes = b""  # Ed25519 over labels.advert_payload in active mode

    def __post_init__(self) -> None:
        _round_sender(self)
        _bytes("c_public", self.c_public, KEY_BYTES)
        _bytes("s_public", self.s_public, KEY_BYTES)
        _bytes("commitment", self.commitment, COMMITMENT_BYTES)
        _bytes("signature", self.signature, 0, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class Commitments:
    """Server -> client: the graph-nonce commitment of every client that advertised
    (``(id, commitment)``, ids ascending); the same list goes to each of them."""

    TYPE: ClassVar[MsgType] = MsgType.COMMITMENTS
    round_id: int
    commitments: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _round_sender(self)
        _pairs("commitments", self.commitments, COMMITMENT_BYTES)


@dataclass(frozen=True, slots=True)
class Reveal:
    """Client -> server: the graph-seed nonce it committed to."""

    TYPE: ClassVar[MsgType] = MsgType.REVEAL
    round_id: int
    sender: int
    nonce: bytes

    def __post_init__(self) -> None:
        _round_sender(self)
        _bytes("nonce", self.nonce, NONCE_BYTES)


@dataclass(frozen=True, slots=True)
class RosterEntry:
    """One advertised client, as relayed by the server."""

    client_id: int
    c_public: bytes
    s_public: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _int("client_id", self.client_id, MAX_CLIENT_ID)
        _bytes("c_public", self.c_public, KEY_BYTES)
        _bytes("s_public", self.s_public, KEY_BYTES)
        _bytes("signature", self.signature, 0, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class Roster:
    """Server -> client: every committer's revealed nonce (``(id, nonce)``, ids ascending:
    the graph seed) and the advertised keys of the recipient and its advertised neighbours."""

    TYPE: ClassVar[MsgType] = MsgType.ROSTER
    round_id: int
    entries: tuple[RosterEntry, ...]
    reveals: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        _round_sender(self)
        _entries(self.entries, RosterEntry)
        _pairs("reveals", self.reveals, NONCE_BYTES)


@dataclass(frozen=True, slots=True)
class ShareKeys:
    """Client -> server: one share ciphertext per neighbour, ``(recipient, ciphertext)``."""

    TYPE: ClassVar[MsgType] = MsgType.SHARE_KEYS
    round_id: int
    sender: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _round_sender(self)
        _pairs("ciphertexts", self.ciphertexts, SHARE_CIPHERTEXT_BYTES)


@dataclass(frozen=True, slots=True)
class SharesRelay:
    """Server -> client: the share ciphertexts addressed to it, ``(sender, ciphertext)``."""

    TYPE: ClassVar[MsgType] = MsgType.SHARES_RELAY
    round_id: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _round_sender(self)
        _pairs("ciphertexts", self.ciphertexts, SHARE_CIPHERTEXT_BYTES)


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Client -> server: ``count`` ring elements of ``bits`` bits, bit-packed (masked or plain)."""

    TYPE: ClassVar[MsgType] = MsgType.MASKED_INPUT
    round_id: int
    sender: int
    count: int
    bits: int
    data: bytes

    def __post_init__(self) -> None:
        _round_sender(self)
        _int("count", self.count, 2**32 - 1, lo=1)
        _int("bits", self.bits, 32, lo=8)
        _bytes("data", self.data, packed_size(self.count, self.bits))


@dataclass(frozen=True, slots=True)
class ConsistencyRequest:
    """Server -> client (active mode): the survivor set U3 to sign."""

    TYPE: ClassVar[MsgType] = MsgType.CONSISTENCY_REQUEST
    round_id: int
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        _round_sender(self)
        _ids("survivors", self.survivors)


@dataclass(frozen=True, slots=True)
class ConsistencySignature:
    """Client -> server (active mode): its signature over the survivor set."""

    TYPE: ClassVar[MsgType] = MsgType.CONSISTENCY_SIGNATURE
    round_id: int
    sender: int
    signature: bytes

    def __post_init__(self) -> None:
        _round_sender(self)
        _bytes("signature", self.signature, SIGNATURE_BYTES)


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Server -> client: whose seed shares (survivors) and key shares (dropped) to reveal.

    In active mode ``signatures`` carries the consistency signatures of the closed
    neighbourhoods the recipient holds shares of (every signature the server collected when
    the config has ``noise_release``). ``survivor_count`` is ``|U3|``, the number of inputs in
    the sum over the whole cohort: a client holding removable noise releases the components
    that this count makes excess (:meth:`secagg.protocols.client.SecAggClient.hold_removable`).
    """

    TYPE: ClassVar[MsgType] = MsgType.UNMASK_REQUEST
    round_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()
    survivor_count: int = 0

    def __post_init__(self) -> None:
        _round_sender(self)
        _ids("survivors", self.survivors)
        _ids("dropped", self.dropped)
        _pairs("signatures", self.signatures, SIGNATURE_BYTES)
        _int("survivor_count", self.survivor_count, MAX_CLIENT_ID + 1, lo=0)


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Client -> server: ``(owner, share)`` seed shares and mask-key shares, 33 bytes each,
    and ``noise_seeds``: the sender's OWN released noise components, ``(level, 32-byte seed)``
    with levels ascending from 1 (empty unless it holds removable noise)."""

    TYPE: ClassVar[MsgType] = MsgType.UNMASK_RESPONSE
    round_id: int
    sender: int
    seed_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]
    noise_seeds: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        _round_sender(self)
        _pairs("seed_shares", self.seed_shares, shamir.SHARE_BYTES)
        _pairs("key_shares", self.key_shares, shamir.SHARE_BYTES)
        _pairs("noise_seeds", self.noise_seeds, NOISE_SEED_BYTES)
        if self.noise_seeds and self.noise_seeds[0][0] < 1:
            raise ValueError("noise_seeds levels start at 1")


Message = (
    AdvertiseKeys | Commitments | Reveal | Roster | ShareKeys | SharesRelay | MaskedInput
    | ConsistencyRequest | ConsistencySignature | UnmaskRequest | UnmaskResponse | KeyAdvert
    | KeyRoster | KeyDistribution | KeyDelivery | KeyConfirm | CkksInput | EncryptedSum
)
"""Any protocol message."""

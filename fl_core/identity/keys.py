"""Curve key pairs, client identities bound to them, and key files with safe permissions.

A client has two keys: a CurveZMQ key pair that authenticates its connection (the server's
ZAP authenticator checks the public half against an allowlist), and the Ed25519 identity key
(:mod:`secagg.sign`) it signs protocol messages with. The two are *bound*: the identity key
signs ``label || client id || Curve public key || identity public key``, and the resulting
:class:`ClientCard` is what the server allowlists. So the server knows, for each connection it
accepted, which client id and which signature key stand behind it, and a client cannot present
one party's Curve key with another party's identity.

Key files live in :mod:`secagg.fl_core.identity.keyfiles`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import zmq
from zmq.utils import z85

from secagg.errors import InvalidKeyError
from secagg.fl_core.errors import KeyBindingError, KeyFileError
from secagg.protocols.context import MAX_CLIENT_ID
from secagg.sign import SigningKey, VerifyKey

__all__ = [
    "Allowlist",
    "ClientCard",
    "ClientKeys",
    "CurveKeyPair",
    "binding_message",
    "check_client_id",
    "check_curve_key",
]

_BINDING_LABEL: Final = b"secagg/fl_core/curve-identity-binding/v1\x00"
_Z85_KEY_LEN: Final = 40


def check_curve_key(name: str, value: object) -> bytes:
    """Check a Z85-encoded 32-byte Curve key; return it as bytes.

    Raises:
        TypeError: not str or bytes.
        InvalidKeyError: not 40 characters of valid Z85.
    """
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be Z85 bytes, got {type(value).__name__}")
    if len(value) != _Z85_KEY_LEN:
        raise InvalidKeyError(f"{name} must be {_Z85_KEY_LEN} Z85 characters")
    try:
        canonical = z85.encode(z85.decode(value)) == value
    except (ValueError, KeyError, struct.error, IndexError):
        canonical = False
    if not canonical:
        raise InvalidKeyError(f"{name} is not valid Z85")
    return value


def check_client_id(client_id: object) -> int:
    """Return ``client_id`` if it is a valid client id.

    Raises:
        TypeError: not an int (bools are refused).
        ValueError: outside ``0 .. MAX_CLIENT_ID``.
    """
    if isinstance(client_id, bool) or not isinstance(client_id, int):
        raise TypeError(f"client_id must be int, got {type(client_id).__name__}")
    if not 0 <= client_id <= MAX_CLIENT_ID:
        raise ValueError(f"client_id must be in [0, {MAX_CLIENT_ID}], got {client_id}")
    return client_id


@dataclass(frozen=True, slots=True)
class CurveKeyPair:
    """A CurveZMQ key pair, both halves Z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes

    def __post_init__(self) -> None:
        """Check both halves and that they belong together.

        Raises:
            TypeError / InvalidKeyError: a half is not a Z85 Curve key.
            KeyBindingError: the secret does not belong to the public key.
        """
        check_curve_key("public", self.public)
        check_curve_key("secret", self.secret)
        if zmq.curve_public(self.secret) != self.public:
            raise KeyBindingError("Curve secret key does not match its public key")

    @classmethod
    def generate(cls) -> CurveKeyPair:
        """Return a fresh key pair from libzmq (libsodium's CSPRNG)."""
        public, secret = zmq.curve_keypair()
        return cls(public=public, secret=secret)

    def __repr__(self) -> str:
        return f"CurveKeyPair(public={self.public.decode()!r})"  # never the secret half


def binding_message(client_id: int, curve_public: bytes, identity: VerifyKey) -> bytes:
    """The bytes a client's identity key signs to bind itself to its Curve key and id.

    Raises:
        TypeError / ValueError / InvalidKeyError: a malformed argument.
    """
    check_client_id(client_id)
    raw_curve = z85.decode(check_curve_key("curve_public", curve_public))
    return _BINDING_LABEL + struct.pack(">I", client_id) + raw_curve + identity.to_bytes()


@dataclass(frozen=True, slots=True)
class ClientCard:
    """A client's public identity: id, Curve public key, Ed25519 key, and the binding."""

    client_id: int
    curve_public: bytes
    identity: VerifyKey
    binding_signature: bytes

    def __post_init__(self) -> None:
        """Check the binding.

        Raises:
            TypeError / ValueError / InvalidKeyError: a malformed field.
            KeyBindingError: the identity key did not sign this Curve key and id.
        """
        if not isinstance(self.identity, VerifyKey):
            raise TypeError("identity must be a VerifyKey")
        msg = binding_message(self.client_id, self.curve_public, self.identity)
        try:
            self.identity.verify(self.binding_signature, msg)
        except Exception:
            raise KeyBindingError(
                f"client {self.client_id}: identity key is not bound to this Curve key"
            ) from None


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """Everything secret a client holds: its id, Curve key pair and identity signing key."""

    client_id: int
    curve: CurveKeyPair
    identity: SigningKey

    @classmethod
    def generate(cls, client_id: int) -> ClientKeys:
        """Fresh Curve and identity keys for ``client_id``.

        Raises:
            TypeError / ValueError: ``client_id`` is not an int in range.
        """
        return cls(check_client_id(client_id), CurveKeyPair.generate(), SigningKey.generate())

    @property
    def card(self) -> ClientCard:
        """The signed public card to hand to the server's allowlist."""
        vk = self.identity.verify_key
        sig = self.identity.sign(binding_message(self.client_id, self.curve.public, vk))
        return ClientCard(self.client_id, self.curve.public, vk, sig)

    def __repr__(self) -> str:
        return f"ClientKeys(client_id={self.client_id}, curve={self.curve!r})"


class Allowlist(Mapping[int, ClientCard]):
    """Client id -> verified :class:`ClientCard`, with a reverse index by Curve public key.

    Immutable once built, so the ZAP thread may read it while the server thread runs.
    """

    __slots__ = ("_by_curve", "_by_id")

    def __init__(self, cards: Iterable[ClientCard]) -> None:
        """Index verified cards (a :class:`ClientCard` checks its binding when built).

        Raises:
            TypeError: an item is not a ClientCard.
            KeyFileError: two cards share a client id or a Curve key.
        """
        by_id: dict[int, ClientCard] = {}
        by_curve: dict[bytes, int] = {}
        for card in cards:
            if not isinstance(card, ClientCard):
                raise TypeError(f"expected ClientCard, got {type(card).__name__}")
            if card.client_id in by_id:
                raise KeyFileError(f"client id {card.client_id} appears twice in the allowlist")
            if card.curve_public in by_curve:
                raise KeyFileError(
                    f"clients {by_curve[card.curve_public]} and {card.client_id} share a Curve key"
                )
            by_id[card.client_id] = card
            by_curve[card.curve_public] = card.client_id
        self._by_id = by_id
        self._by_curve = by_curve

    def client_for_curve_key(self, curve_public: bytes) -> int | None:
        """The client id allowlisted for a Z85 Curve public key, or None."""
        return self._by_curve.get(curve_public)

    def __getitem__(self, client_id: int) -> ClientCard:
        return self._by_id[client_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

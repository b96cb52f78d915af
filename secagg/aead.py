"""Authenticated encryption: AES-256-GCM through ``cryptography``.

Wire format: ``nonce (12) || ciphertext || tag (16)``. The nonce is 96 random bits per
message, so one key must encrypt far fewer than 2^32 messages (NIST SP 800-38D, section 8.3);
the protocols derive a fresh key per pair and round and send a handful of messages under it.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secagg import rng
from secagg._check import check_bytes
from secagg.errors import InvalidCiphertext

__all__ = ["KEY_BYTES", "NONCE_BYTES", "OVERHEAD", "TAG_BYTES", "Aead"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


class Aead:
    """AES-256-GCM under one key; the ``AESGCM`` object is kept and reused across calls."""

    __slots__ = ("_aesgcm",)

    def __init__(self, key: bytes) -> None:
        """Bind the cipher to a 32-byte key.

        Raises:
            TypeError: ``key`` is not bytes-like.
            ValueError: ``key`` is not exactly 32 bytes.
        """
        self._aesgcm = AESGCM(check_bytes("key", key, length=KEY_BYTES))

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt ``plaintext``, authenticating ``associated_data`` too; return nonce||ct||tag.

        Raises:
            TypeError: ``plaintext`` or ``associated_data`` is not bytes-like.
        """
        pt = check_bytes("plaintext", plaintext)
        ad = check_bytes("associated_data", associated_data)
        nonce = rng.random_bytes(NONCE_BYTES)
        return nonce + self._aesgcm.encrypt(nonce, pt, ad)

    def decrypt(self, blob: bytes, associated_data: bytes) -> bytes:
        """Open ``blob`` (as made by :meth:`encrypt`) under ``associated_data``.

        Raises:
            TypeError: ``blob`` or ``associated_data`` is not bytes-like.
            InvalidCiphertext: any failure at all (too short, wrong key, wrong nonce, wrong
                associated data, a flipped bit); deliberately indistinguishable.
        """
        data = check_bytes("blob", blob)
        ad = check_bytes("associated_data", associated_data)
        if len(data) < OVERHEAD:
            raise InvalidCiphertext("ciphertext does not authenticate")
        view = memoryview(data)
        try:
            return self._aesgcm.decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], ad)
        except InvalidTag:
            raise InvalidCiphertext("ciphertext does not authenticate") from None

    def __repr__(self) -> str:
        return "Aead(<key hidden>)"

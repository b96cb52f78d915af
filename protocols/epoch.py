"""The public parameters of one CKKS key epoch, and the leader rule.

An :class:`EpochContext` is to a key setup what a :class:`secagg.protocols.context.RoundContext` is
to a round: the config, the epoch number, the members (the clients that may receive the key) and, in
active mode, their Ed25519 verify keys, plus an optional public seed (a beacon, say). Its SHA-256
digest salts every key-setup key exchange and is bound into every key-setup AEAD associated data and
signature, so nothing from one epoch is valid in another.

Leader rule (no dealer): among the members that advertised a key (the roster), the leader is
the one with the smallest ``SHA-256(tag || digest || id)`` (rendezvous hashing). Every party
computes it from public data; the digest is fixed before anyone advertises, so nobody can grind
it. The server can only choose which advertised members to list, i.e. pick some member: the
leader is one of the key holders anyway, and every holder can decrypt every ciphertext of the
epoch, so the choice confers nothing (in ``ckks+mask`` the masks protect each update from
every key holder).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

from secagg.protocols.config import SecAggConfig
from secagg.protocols.context import MAX_CLIENT_ID, MAX_ROUND_ID, _check_int
from secagg.protocols.errors import ConfigError
from secagg.sign import VerifyKey

__all__ = ["MAX_SEED_BYTES", "EpochContext"]

MAX_SEED_BYTES = 64
_LEADER_TAG = b"secagg/v1/ckks/leader"


class EpochContext:
    """Config, epoch, members, (active mode) verify keys and public seed of a key setup."""

    __slots__ = ("_config", "_digest", "_epoch", "_id_set", "_ids", "_seed", "_vks")

    def __init__(
        self,
        *,
        config: SecAggConfig,
        epoch: int,
        client_ids: Iterable[int],
        verify_keys: Mapping[int, VerifyKey] | None = None,
        seed: bytes = b"",
    ) -> None:
        """Validate and bind the epoch's public parameters.

        Raises:
            TypeError: a parameter has the wrong type.
            ConfigError: not a CKKS config; ``epoch`` out of range; ids not distinct, empty or
                outside ``[0, 2^32 - 2]``; verify keys missing in active mode, given in passive
                mode, or not one per member; ``seed`` longer than 64 bytes.
        """
        if not isinstance(config, SecAggConfig):
            raise TypeError(f"config must be SecAggConfig, got {type(config).__name__}")
        if not config.is_ckks:
            raise ConfigError("key epochs exist only for the CKKS protocols")
        self._config = config
        self._epoch = _check_int("epoch", epoch, MAX_ROUND_ID)
        ids = [_check_int("client id", i, MAX_CLIENT_ID) for i in client_ids]
        self._ids = tuple(sorted(set(ids)))
        if len(self._ids) != len(ids) or not ids:
            raise ConfigError("member ids must be distinct and at least one")
        self._id_set = frozenset(self._ids)
        if not isinstance(seed, bytes):
            raise TypeError(f"seed must be bytes, got {type(seed).__name__}")
        if len(seed) > MAX_SEED_BYTES:
            raise ConfigError(f"seed must be at most {MAX_SEED_BYTES} bytes")
        self._seed = seed
        self._vks = self._check_verify_keys(verify_keys)
        self._digest = hashlib.sha256(self._encode()).digest()

    def _check_verify_keys(
        self, verify_keys: Mapping[int, VerifyKey] | None
    ) -> dict[int, VerifyKey]:
        if not self._config.active:
            if verify_keys:
                raise ConfigError("verify keys are only used in active mode")
            return {}
        if verify_keys is None or not self._id_set <= set(verify_keys):
            raise ConfigError("active mode needs a verify key for every member")
        for cid in self._ids:
            if not isinstance(verify_keys[cid], VerifyKey):
                raise TypeError(f"verify key of {cid} must be VerifyKey")
        return {cid: verify_keys[cid] for cid in self._ids}

    def _encode(self) -> bytes:
        parts = [
            b"secagg/ckks-epoch/v1",
            self._config.to_bytes(),
            struct.pack(">QIB", self._epoch, len(self._ids), len(self._seed)),
            self._seed,
            struct.pack(f">{len(self._ids)}I", *self._ids),
        ]
        parts += [self._vks[i].to_bytes() for i in self._ids if self._vks]
        return b"".join(parts)

    @property
    def config(self) -> SecAggConfig:
        """The configuration (a CKKS protocol; its preset is the key's)."""
        return self._config

    @property
    def epoch(self) -> int:
        """The epoch number."""
        return self._epoch

    @property
    def round_id(self) -> int:
        """What every key-setup message carries in its ``round_id`` field: the epoch."""
        return self._epoch

    @property
    def client_ids(self) -> tuple[int, ...]:
        """The members, ascending."""
        return self._ids

    def is_client(self, cid: int) -> bool:
        """True if ``cid`` is a member."""
        return cid in self._id_set

    def verify_key(self, cid: int) -> VerifyKey:
        """The identity key of member ``cid`` (active mode).

        Raises:
            KeyError: no verify key (passive mode, or not a member).
        """
        return self._vks[cid]

    @property
    def digest(self) -> bytes:
        """SHA-256 over config, epoch, seed, members and verify keys."""
        return self._digest

    def leader(self, candidates: Iterable[int]) -> int:
        """The leader among ``candidates`` (the advertised members): smallest hash wins.

        Raises:
            ValueError: no candidates, or one that is not a member.
        """
        ids = sorted(set(candidates))
        if not ids or not all(self.is_client(u) for u in ids):
            raise ValueError("leader candidates must be a non-empty set of members")
        return min(ids, key=lambda u: hashlib.sha256(
            _LEADER_TAG + self._digest + struct.pack(">I", u)).digest())

    def __repr__(self) -> str:
        return (f"EpochContext(protocol={self._config.protocol.value!r}, epoch={self._epoch}, "
                f"members={len(self._ids)}, digest={self._digest.hex()[:16]})")

"""What every party of one round must agree on before it starts, and its digest.

A :class:`RoundContext` fixes the configuration, the round number, the vector length, the
eligible client ids, (active mode) their Ed25519 verify keys and (CKKS protocols) the
fingerprint of the CKKS context of the key epoch, so a round is bound to one key, and (the
runtime) the digest of the clients' pinned policy (:mod:`secagg.fl_core.runtime.policy`), so parties
whose policies differ never share a round. Its SHA-256 digest is the HKDF salt of every
pairwise key and is bound into every PRG label, AEAD associated data and signature, so nothing
from another round, config, cohort or policy can be replayed into this one.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from secagg.fixedpoint import FixedPointConfig
from secagg.protocols.config import SecAggConfig
from secagg.protocols.errors import ConfigError
from secagg.sign import VerifyKey

__all__ = ["MAX_CLIENT_ID", "MAX_DIM", "MAX_ROUND_ID", "RoundContext"]

MAX_CLIENT_ID = 2**32 - 2  # Shamir evaluation point id + 1 must stay below 2^32
MAX_ROUND_ID = 2**64 - 1
MAX_DIM = 2**32 - 2  # the weighted vector carries one extra value
_POLICY_TAG = b"secagg/policy/v1"


def _check_int(name: str, value: Any, hi: int, lo: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


class RoundContext:
    """Config, round id, vector length, client ids and (active mode) verify keys of a round."""

    __slots__ = ("_ckks", "_config", "_digest", "_dim", "_fp", "_id_set", "_ids", "_policy",
                 "_round", "_vks")

    def __init__(
        self,
        *,
        config: SecAggConfig,
        round_id: int,
        dim: int,
        client_ids: Iterable[int],
        verify_keys: Mapping[int, VerifyKey] | None = None,
        ckks_fingerprint: bytes | None = None,
        policy_digest: bytes | None = None,
    ) -> None:
        """Validate and bind the round's public parameters.

        Raises:
            TypeError: a parameter has the wrong type.
            ConfigError: ``round_id`` or ``dim`` out of range; ids not distinct, outside
                ``[0, 2^32 - 2]`` or not exactly ``config.n`` of them; verify keys missing in
                active mode, given in passive mode, or not exactly one per client;
                ``ckks_fingerprint`` (32 bytes) missing for a CKKS protocol or given for another;
                ``policy_digest`` given but not 32 bytes.
        """
        if not isinstance(config, SecAggConfig):
            raise TypeError(f"config must be SecAggConfig, got {type(config).__name__}")
        self._config = config
        self._round = _check_int("round_id", round_id, MAX_ROUND_ID)
        self._dim = _check_int("dim", dim, MAX_DIM, lo=1)
        ids = [_check_int("client id", i, MAX_CLIENT_ID) for i in client_ids]
        self._ids = tuple(sorted(set(ids)))
        if len(self._ids) != len(ids):
            raise ConfigError("client ids must be distinct")
        if len(self._ids) != config.n:
            raise ConfigError(f"config.n = {config.n} but {len(self._ids)} client ids given")
        self._id_set = frozenset(self._ids)
        self._vks = self._check_verify_keys(verify_keys)
        if ckks_fingerprint is not None and not isinstance(ckks_fingerprint, bytes):
            raise TypeError("ckks_fingerprint must be bytes")
        if config.is_ckks != (ckks_fingerprint is not None):
            raise ConfigError("ckks_fingerprint is required for, and only for, CKKS protocols")
        if ckks_fingerprint is not None and len(ckks_fingerprint) != 32:
            raise ConfigError("ckks_fingerprint must be 32 bytes")
        self._ckks = ckks_fingerprint
        if policy_digest is not None and not isinstance(policy_digest, bytes):
            raise TypeError("policy_digest must be bytes")
        if policy_digest is not None and len(policy_digest) != 32:
            raise ConfigError("policy_digest must be 32 bytes")
        self._policy = policy_digest
        self._fp = config.fixed_point
        self._digest = hashlib.sha256(self._encode()).digest()

    def _check_verify_keys(
        self, verify_keys: Mapping[int, VerifyKey] | None
    ) -> dict[int, VerifyKey]:
        if not self._config.active:
            if verify_keys:
                raise ConfigError("verify keys are only used in active mode")
            return {}
        if verify_keys is None or set(verify_keys) != self._id_set:
            raise ConfigError("active mode needs exactly one verify key per client id")
        for cid, vk in verify_keys.items():
            if not isinstance(vk, VerifyKey):
                raise TypeError(f"verify key of {cid} must be VerifyKey, got {type(vk).__name__}")
        return dict(verify_keys)

    def _encode(self) -> bytes:
        parts = [
            b"secagg/round-context/v1",
            self._config.to_bytes(),
            struct.pack(">QQI", self._round, self._dim, len(self._ids)),
            struct.pack(f">{len(self._ids)}I", *self._ids),
        ]
        parts += [self._vks[i].to_bytes() for i in self._ids if self._vks]
        if self._ckks is not None:  # CKKS configs say it is there (fixed 32 bytes)
            parts.append(self._ckks)
        if self._policy is not None:  # tagged, so contexts without one encode as before
            parts += [_POLICY_TAG, self._policy]
        return b"".join(parts)

    @property
    def config(self) -> SecAggConfig:
        """The round's configuration."""
        return self._config

    @property
    def round_id(self) -> int:
        """The round number every message must carry."""
        return self._round

    @property
    def dim(self) -> int:
        """Length of each client's input vector."""
        return self._dim

    @property
    def vector_length(self) -> int:
        """Ring elements per masked vector: ``dim`` (+1 for the weight in weighted mode)."""
        return self._dim + 1 if self._config.weighted else self._dim

    @property
    def client_ids(self) -> tuple[int, ...]:
        """The eligible client ids, ascending."""
        return self._ids

    def is_client(self, cid: int) -> bool:
        """True if ``cid`` is one of the round's clients."""
        return cid in self._id_set

    def verify_key(self, cid: int) -> VerifyKey:
        """The identity key of client ``cid`` (active mode).

        Raises:
            KeyError: ``cid`` has no verify key (passive mode, or not a client).
        """
        return self._vks[cid]

    @property
    def ckks_fingerprint(self) -> bytes:
        """Fingerprint of the round's CKKS context (the key epoch's).

        Raises:
            ConfigError: not a CKKS round.
        """
        if self._ckks is None:
            raise ConfigError("not a CKKS round")
        return self._ckks

    @property
    def policy_digest(self) -> bytes | None:
        """The digest of the parties' pinned policy bound into the context (None: unbound)."""
        return self._policy

    @property
    def fixed_point(self) -> FixedPointConfig:
        """The fixed-point ring of the config."""
        return self._fp

    @property
    def digest(self) -> bytes:
        """SHA-256 over config, round id, dim, client ids, verify keys, the CKKS fingerprint and
        the policy digest."""
        return self._digest

    def __repr__(self) -> str:
        return (f"RoundContext(protocol={self._config.protocol.value!r}, round_id={self._round}, "
                f"dim={self._dim}, n={len(self._ids)}, digest={self._digest.hex()[:16]})")

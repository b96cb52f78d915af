"""CKKS contexts: the secret context every key holder shares, and the keyless public one.

Symmetric encryption: every client holds the secret key (a key leader sends
:meth:`CkksSecretContext.serialize_secret` AEAD-encrypted); the server holds a
:class:`CkksPublicContext`, which carries the parameters only (no secret, public,
relinearisation or Galois key: addition needs none) plus a random 32-byte context id. Its
SHA-256 fingerprint goes into every ciphertext chunk. Keyless TenSEAL serialization is a
deterministic function of the parameters, so a public context from a peer is accepted only if
its TenSEAL part equals the preset's own bytes: no untrusted context bytes reach TenSEAL.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np

try:
    import tenseal as ts
except ImportError as exc:  # CKKS is an extra: the core install has no TenSEAL
    raise ImportError("CKKS needs TenSEAL: pip install 'secagg[ckks]'") from exc

from secagg import rng
from secagg.ckks_params import PRESETS, CkksPreset
from secagg.ckks_seeded import SeededEncryptor, seeded_available
from secagg.ckks_wire import (
    CONTEXT_ID_BYTES,
    context_proto_field,
    context_proto_int,
    decode_envelope,
    encode_envelope,
    vector_proto_ciphertext,
)
from secagg.errors import CkksError

__all__ = ["CkksPublicContext", "CkksSecretContext"]

_PUBLIC_MAGIC = b"SAcp"
_SECRET_MAGIC = b"SAcs"
_SYMMETRIC = 1  # TenSEALContextProto.encryption_type for ENCRYPTION_TYPE.SYMMETRIC


def _new_tenseal_context(preset: CkksPreset) -> Any:
    return ts.context(
        ts.SCHEME_TYPE.CKKS,
        preset.poly_modulus_degree,
        coeff_mod_bit_sizes=list(preset.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        n_threads=1,
    )


def _public_tenseal_bytes(ctx: Any) -> bytes:
    data: bytes = ctx.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return data


def _secret_tenseal_bytes(ctx: Any) -> bytes:
    data: bytes = ctx.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return data


@functools.cache
def _reference_public_bytes(preset: CkksPreset) -> bytes:
    # Keyless TenSEAL serialization is a deterministic function of the parameters (the exact
    # primes included); one throwaway context per preset and process computes it.
    return _public_tenseal_bytes(_new_tenseal_context(preset))


def _load_tenseal(data: bytes) -> Any:
    try:
        return ts.context_from(data, n_threads=1)
    except Exception as exc:  # pybind maps SEAL/protobuf failures to assorted exceptions
        raise CkksError("TenSEAL context does not load") from exc


def _open_envelope(magic: bytes, data: Any) -> tuple[CkksPreset, bytes, bytes]:
    """``(preset, context id, payload)`` of a serialized context; the preset must be known."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    name, context_id, payload = decode_envelope(magic, bytes(data))
    preset = PRESETS.get(name)
    if preset is None:
        raise CkksError(f"unknown CKKS preset {name!r}")
    return preset, context_id, payload


class CkksPublicContext:
    """Parameters and context id, no keys: enough to add ciphertexts, not to encrypt or decrypt.

    Build it with :meth:`CkksSecretContext.public_context` or :meth:`from_bytes`.
    """

    __slots__ = ("_bytes", "_context_id", "_fingerprint", "_preset", "_ts")

    def __init__(self, preset: CkksPreset, context_id: bytes, tenseal_context: Any) -> None:
        """Internal: use :meth:`from_bytes` or :meth:`CkksSecretContext.public_context`.

        Raises:
            CkksError: ``tenseal_context`` holds a secret key.
        """
        if tenseal_context.is_private():
            raise CkksError("a public context must not hold a secret key")
        self._preset = preset
        self._context_id = context_id
        self._ts = tenseal_context
        self._bytes = encode_envelope(
            _PUBLIC_MAGIC, preset.name, context_id, _reference_public_bytes(preset)
        )
        self._fingerprint = hashlib.sha256(self._bytes).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> CkksPublicContext:
        """Load a public context; it must hold exactly a known preset's parameters and no key.

        Raises:
            TypeError: ``data`` is not bytes.
            CkksError: malformed, unknown preset, or any key (secret or otherwise) inside.
        """
        preset, context_id, payload = _open_envelope(_PUBLIC_MAGIC, data)
        if payload != _reference_public_bytes(preset):
            raise CkksError(
                f"public context must hold exactly the {preset.name} parameters and no key material"
            )
        ctx = _load_tenseal(payload)
        if ctx.is_private():
            raise CkksError("public context holds a secret key")
        return cls(preset, context_id, ctx)

    def to_bytes(self) -> bytes:
        """Canonical serialization (what :attr:`fingerprint` hashes)."""
        return self._bytes

    @property
    def preset(self) -> CkksPreset:
        """The parameter preset."""
        return self._preset

    @property
    def context_id(self) -> bytes:
        """32 random bytes drawn when the secret context was generated."""
        return self._context_id

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of :meth:`to_bytes`; every ciphertext chunk carries it."""
        return self._fingerprint

    def tenseal_context(self) -> Any:
        """The underlying keyless ``tenseal.Context`` (for inspection; do not add keys)."""
        return self._ts


class CkksSecretContext:
    """A CKKS context with its secret key (symmetric encryption; no Galois or relinearisation
    keys are generated into what is shared: addition only)."""

    __slots__ = ("_context_id", "_encryptor", "_preset", "_public", "_ts")

    def __init__(self, preset: CkksPreset, context_id: bytes, tenseal_context: Any) -> None:
        self._preset = preset
        self._context_id = context_id
        self._ts = tenseal_context
        public = _public_tenseal_bytes(tenseal_context)
        if public != _reference_public_bytes(preset):
            raise CkksError(f"context parameters are not those of {preset.name}")
        self._public = CkksPublicContext(preset, context_id, _load_tenseal(public))
        self._encryptor: SeededEncryptor | None = None

    @classmethod
    def generate(cls, preset: CkksPreset) -> CkksSecretContext:
        """Fresh secret key (SEAL's key generator) and a fresh random context id.

        TenSEAL always generates relinearisation keys with a new context; we keep only the
        secret key (a reload without them), so a generated context and a loaded one are alike.

        Raises:
            TypeError: ``preset`` is not a :class:`CkksPreset`.
            ValueError: ``preset`` is not one of :data:`PRESETS` (contexts name their preset
                on the wire).
        """
        if not isinstance(preset, CkksPreset):
            raise TypeError(f"preset must be CkksPreset, got {type(preset).__name__}")
        if PRESETS.get(preset.name) != preset:
            raise ValueError(f"preset {preset.name!r} is not a registered preset")
        fresh = _new_tenseal_context(preset)
        ctx = _load_tenseal(_secret_tenseal_bytes(fresh))
        return cls(preset, rng.random_bytes(CONTEXT_ID_BYTES), ctx)

    def serialize_secret(self) -> bytes:
        """Preset, context id and secret key; send only AEAD-encrypted to key holders."""
        return encode_envelope(
            _SECRET_MAGIC, self._preset.name, self._context_id, self._secret_payload()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CkksSecretContext:
        """Load :meth:`serialize_secret` output.

        Raises:
            TypeError: ``data`` is not bytes.
            CkksError: malformed, unknown preset, parameters other than the preset's,
                asymmetric, or no secret key.
        """
        preset, context_id, payload = _open_envelope(_SECRET_MAGIC, data)
        reference = _reference_public_bytes(preset)
        if context_proto_field(payload, 1) != context_proto_field(reference, 1):
            raise CkksError(f"secret context parameters are not those of {preset.name}")
        if context_proto_int(payload, 4) != _SYMMETRIC or not context_proto_field(payload, 3, 1):
            raise CkksError("secret context must be symmetric and hold a secret key")
        ctx = _load_tenseal(payload)
        if not ctx.has_secret_key():
            raise CkksError("secret context holds no secret key")
        return cls(preset, context_id, ctx)

    def public_context(self) -> CkksPublicContext:
        """The keyless public counterpart (the server's view)."""
        return self._public

    @property
    def preset(self) -> CkksPreset:
        """The parameter preset."""
        return self._preset

    @property
    def context_id(self) -> bytes:
        """32 random bytes drawn at generation."""
        return self._context_id

    @property
    def fingerprint(self) -> bytes:
        """The public context's fingerprint."""
        return self._public.fingerprint

    def tenseal_context(self) -> Any:
        """The underlying private ``tenseal.Context``."""
        return self._ts

    def encrypt_chunks(
        self, chunks: list[np.ndarray[Any, Any]], scale: float, *, seeded: bool
    ) -> list[bytes]:
        """Encode and encrypt each chunk (<= N/2 float64 slot values) at ``scale``; return the
        SEAL ciphertext bytes, seeded if asked and :func:`seeded_available`. Low level: use
        :func:`secagg.ckks.encrypt_ints` / :func:`secagg.ckks.encrypt_floats`.

        Raises:
            CkksError: SEAL refused the encoding (values too large for the modulus).
        """
        if seeded and seeded_available():
            if self._encryptor is None:
                key = context_proto_field(self._secret_payload(), 3, 1)
                if key is None:  # pragma: no cover - a secret context always has one
                    raise CkksError("secret key missing")
                self._encryptor = SeededEncryptor(
                    poly_modulus_degree=self._preset.poly_modulus_degree,
                    coeff_mod_bit_sizes=self._preset.coeff_mod_bit_sizes,
                    secret_key=key,
                )
            return self._encryptor.encrypt_many(chunks, scale=scale)
        out = []
        for chunk in chunks:
            try:
                vec = ts.ckks_vector(self._ts, chunk.tolist(), scale)
            except Exception as exc:
                raise CkksError(f"CKKS encoding failed: {exc}") from exc
            out.append(vector_proto_ciphertext(vec.serialize()))
        return out

    def _secret_payload(self) -> bytes:
        return _secret_tenseal_bytes(self._ts)

"""The ``"ckks"`` protocol: clients encrypt, the keyless server adds, clients decrypt.

Every client of the round holds the epoch's CKKS secret context (from
:mod:`secagg.protocols.keysetup`); the round context binds its fingerprint. One round:

1. ``start(x)``: fixed-point encode exactly as SecAgg (weighted FedAvg: ``w x`` and ``w`` in one
   vector), lift the ring elements to signed integers, pack several per slot
   (:class:`secagg.ckks.SlotLayout` from the config) and encrypt (seeded, half-size
   ciphertexts by default). In active mode the upload is signed over round, sender and a hash
   of the chunks. Stage ``masked_input`` of the harness.
2. The server checks each upload's chunks against the expected layout, context and length
   and adds it on receipt (:class:`secagg.ckks_sum.CkksSum`, public context only; or any
   :class:`secagg.ckks_sum.SummerFactory` passed as ``summer=``, e.g. a runtime's pool of worker
   processes: this module starts none). Closing the stage (the driver's deadline) sends the
   encrypted sum and the included ids to every included client. Dropouts simply leave the sum.
3. Each client decrypts, checks the exact integer decoding (``terms`` = number included,
   integer slots, lane sums within what that many inputs can reach) and decodes:
   ``client.result`` is the :class:`secagg.protocols.encoding.Aggregate` (``result.mean`` divides).

Helpers shared with ``ckks+mask`` (:mod:`secagg.protocols.ckks_mask`) live here too.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from secagg.ckks import CkksPublicContext, CkksSecretContext, decrypt_ints, encrypt_ints
from secagg.ckks_layout import SlotLayout
from secagg.ckks_sum import CkksSum, Summer, SummerFactory
from secagg.errors import CkksError, InvalidSignature
from secagg.packing import unpack
from secagg.protocols import labels
from secagg.protocols.config import ProtocolKind, SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import Aggregate, check_input, decode_aggregate, encode_input
from secagg.protocols.errors import LocalProtocolError, RemoteProtocolError, ThresholdError
from secagg.protocols.messages import CkksInput, EncryptedSum, Message
from secagg.protocols.participant import ClientBase, ServerBase
from secagg.protocols.transitions import ServerStage, client_table_for, server_table_for
from secagg.sign import SigningKey

__all__ = [
    "CkksClient",
    "CkksServer",
    "accept_upload",
    "check_identity",
    "check_key",
    "check_public",
    "encrypt_upload",
    "open_sum",
]


def _layout(cfg: SecAggConfig) -> SlotLayout:
    assert cfg.ckks_layout is not None  # every CKKS config has one
    return cfg.ckks_layout


_C = TypeVar("_C", CkksSecretContext, CkksPublicContext)


def _bound(ctx: RoundContext, value: Any, cls: type[_C], name: str, what: str) -> _C:
    """``value`` if it is a ``cls`` of the round's CKKS context and preset."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be {cls.__name__}, got {type(value).__name__}")
    if value.fingerprint != ctx.ckks_fingerprint or value.preset != _layout(ctx.config).preset:
        raise LocalProtocolError(f"{what} is not the one this round is bound to")
    return value


def check_key(ctx: RoundContext, key: Any) -> CkksSecretContext:
    """``key`` if it is the round's secret context.

    Raises:
        TypeError: not a :class:`CkksSecretContext`.
        LocalProtocolError: another context than the round's, or another preset.
    """
    return _bound(ctx, key, CkksSecretContext, "key", "the CKKS key")


def check_public(ctx: RoundContext, public: Any) -> CkksPublicContext:
    """``public`` if it is the round's public context.

    Raises:
        TypeError: not a :class:`CkksPublicContext`.
        LocalProtocolError: another context than the round's, or another preset.
    """
    return _bound(ctx, public, CkksPublicContext, "public", "the public context")


def check_identity(ctx: RoundContext, cid: int, identity: Any) -> SigningKey | None:
    """The client's signing key in active mode (None in passive mode).

    Raises:
        LocalProtocolError: active mode without the client's registered signing key.
    """
    if not ctx.config.active:
        return None
    if not isinstance(identity, SigningKey) or identity.verify_key != ctx.verify_key(cid):
        raise LocalProtocolError("active mode needs the client's registered signing key")
    return identity


def encrypt_upload(
    ctx: RoundContext, key: CkksSecretContext, ring: npt.NDArray[np.uint32], sender: int,
    identity: SigningKey | None,
) -> CkksInput:
    """Encrypt ring elements mod ``2^bits`` (two's-complement lifted) as one upload."""
    cfg = ctx.config
    bits = cfg.bits
    values = ring.astype(np.int64)
    values[values >= (1 << (bits - 1))] -= 1 << bits
    chunks = encrypt_ints(key, values, _layout(cfg), seeded=cfg.ckks_seeded)
    sig = b""
    if identity is not None:
        sig = identity.sign(labels.ckks_input_payload(ctx, sender, chunks))
    return CkksInput(ctx.round_id, sender, tuple(chunks), sig)


def accept_upload(ctx: RoundContext, acc: Summer, sender: int, msg: CkksInput) -> None:
    """Server side: check one upload (signature in active mode, then every chunk) and add it.

    Raises:
        RemoteProtocolError: bad signature, or a chunk that is truncated, malformed, under
            another context, of another layout, position or vector length (sum unchanged).
    """
    if ctx.config.active:
        try:
            ctx.verify_key(sender).verify(
                msg.signature, labels.ckks_input_payload(ctx, sender, msg.chunks))
        except InvalidSignature:
            raise RemoteProtocolError("encrypted input not signed by the client") from None
    try:
        acc.add(msg.chunks)
    except CkksError as exc:
        raise RemoteProtocolError(f"ciphertext refused: {exc}") from exc


def open_sum(
    ctx: RoundContext, key: CkksSecretContext, msg: EncryptedSum, me: int, *, masked: bool
) -> Aggregate:
    """Client side: check, decrypt and decode the encrypted sum (and remove the masks).

    Raises:
        RemoteProtocolError: ``included`` names non-clients or omits me, the mask correction
            is missing, unexpected or malformed, or the sum does not decrypt to a valid sum of
            ``len(included)`` inputs (another context, tampering, wrong count).
        ThresholdError: fewer than ``threshold`` inputs in the sum.
    """
    cfg, count = ctx.config, ctx.vector_length
    if me not in msg.included or not all(ctx.is_client(u) for u in msg.included):
        raise RemoteProtocolError("encrypted sum omits me or names non-clients")
    if len(msg.included) < cfg.threshold:
        raise ThresholdError(f"only {len(msg.included)} inputs in the sum, need "
                             f"{cfg.threshold}")
    want = (count, cfg.bits) if masked else (0, 0)
    if (msg.mask_count, msg.mask_bits) != want:
        raise RemoteProtocolError(f"mask correction must be {want[0]} values of {want[1]} bits")
    try:
        lanes = decrypt_ints(key, list(msg.chunks), count=count, layout=_layout(cfg),
                             n=len(msg.included))
    except CkksError as exc:
        raise RemoteProtocolError(f"encrypted sum does not decrypt: {exc}") from exc
    mask = (1 << cfg.bits) - 1
    ring = np.bitwise_and(lanes, np.int64(mask)).astype(np.uint32)
    if masked:
        try:
            correction = unpack(msg.mask_correction, cfg.bits, count)
        except ValueError as exc:
            raise RemoteProtocolError(f"mask correction does not unpack: {exc}") from None
        np.add(ring, correction, out=ring)
        np.bitwise_and(ring, np.uint32(mask), out=ring)
    return decode_aggregate(ctx, ring, msg.included)


class CkksClient(ClientBase[RoundContext]):
    """One client of a ``"ckks"`` round; ``result`` holds the decrypted aggregate when DONE."""

    def __init__(
        self, ctx: RoundContext, client_id: int, *, key: CkksSecretContext,
        identity: SigningKey | None = None,
    ) -> None:
        """Create the client with the epoch's secret context ``key``.

        Raises:
            TypeError: ``ctx`` or ``key`` of the wrong type.
            LocalProtocolError: not a client of the round, not a ``"ckks"`` config, a key of
                another context, or (active mode) a missing or wrong identity.
        """
        super().__init__(ctx, client_id, client_table_for(ctx.config))
        if ctx.config.protocol is not ProtocolKind.CKKS:
            raise LocalProtocolError("CkksClient runs protocol 'ckks' only")
        self._key: CkksSecretContext | None = check_key(ctx, key)
        self._identity = check_identity(ctx, client_id, identity)
        self.result: Aggregate | None = None
        """The decrypted aggregate, once DONE."""

    def _on_start(self, x: Any, weight: float | None) -> list[Message]:
        assert self._key is not None
        ring = encode_input(self._ctx, *check_input(self._ctx, x, weight))
        return [encrypt_upload(self._ctx, self._key, ring, self._id, self._identity)]

    def _dispatch(self, msg: Message) -> list[Message]:
        self._check_round(msg)
        if not isinstance(msg, EncryptedSum):  # pragma: no cover (the table rejects it)
            raise RemoteProtocolError(f"unexpected {msg.TYPE.name}")
        assert self._key is not None
        self.result = open_sum(self._ctx, self._key, msg, self._id, masked=False)
        return []

    def _wipe(self) -> None:
        self._key = None


class CkksServer(ServerBase[RoundContext]):
    """The keyless server of a ``"ckks"`` round: adds uploads, returns the encrypted sum."""

    def __init__(
        self, ctx: RoundContext, *, public: CkksPublicContext, summer: SummerFactory = CkksSum,
    ) -> None:
        """Create the server with the epoch's public (keyless) context; ``summer`` makes the
        round's running sum (default: :class:`CkksSum`, in this process).

        Raises:
            TypeError: ``ctx`` or ``public`` of the wrong type, ``summer`` not callable.
            LocalProtocolError: not a ``"ckks"`` config, or a context other than the round's.
            Whatever ``summer`` raises when it cannot make a sum.
        """
        super().__init__(ctx, server_table_for(ctx.config))
        if ctx.config.protocol is not ProtocolKind.CKKS:
            raise LocalProtocolError("CkksServer runs protocol 'ckks' only")
        if not callable(summer):
            raise TypeError(f"summer must be a SummerFactory, got {type(summer).__name__}")
        self._public = check_public(ctx, public)
        self._sum: Summer = summer(public, _layout(ctx.config), count=ctx.vector_length)
        self.encrypted: EncryptedSum | None = None
        """The encrypted sum sent to the clients, once DONE."""

    def _accept(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, CkksInput)  # the table admits nothing else
        accept_upload(self._ctx, self._sum, sender, msg)

    def _close(self, stage: ServerStage, received: frozenset[int]) -> dict[int, Message]:
        t = self._ctx.config.threshold
        if len(received) < t:
            raise ThresholdError(f"only {len(received)} encrypted inputs, need {t}")
        included = tuple(sorted(received))
        self.encrypted = EncryptedSum(self._ctx.round_id, included, tuple(self._sum.result()))
        out: dict[int, Message] = {v: self.encrypted for v in included}
        return out

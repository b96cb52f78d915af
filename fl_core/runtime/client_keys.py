"""The client session's CKKS key setup: a ``keys`` announcement starts a
:class:`secagg.protocols.keysetup.KeySetupClient` under that round id; the epoch's secret
context stays in memory only and is replaced by the next epoch's.

A copy of an announcement (the driver resends it, as it resends a round start, to members that
say hello without answering: :mod:`secagg.fl_core.runtime.round_start`) gets the very messages
the first copy got (:class:`secagg.fl_core.runtime.round_start.AnsweredStart`): a fresh key
setup would advertise new keys under the same epoch, and the server would hold two sessions of
one member. A different announcement under a round id already answered is refused.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from secagg.fl_core.identity.keys import ClientKeys
from secagg.fl_core.runtime.policy import ClientPolicy, PolicyMismatch, RoundClock
from secagg.fl_core.runtime.round_start import AnsweredStart
from secagg.fl_core.transport.sockets import ClientTransport
from secagg.protocols.config import SecAggConfig
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import ProtocolError
from secagg.protocols.wire import encode
from secagg.sign import VerifyKey

if TYPE_CHECKING:  # CKKS is an extra (TenSEAL)
    from secagg.ckks import CkksSecretContext
    from secagg.protocols.keysetup import KeySetupClient

__all__ = ["KeySetupMixin"]

log = logging.getLogger("secagg.fl_core.client")


class KeySetupMixin:
    """The key-setup half of the client session (it owns the attributes declared here)."""

    t: ClientTransport
    keys: ClientKeys | None
    policy: ClientPolicy | None
    clock: RoundClock
    last_round: int
    keysetup: KeySetupClient | None
    keysetup_round: int
    keys_answered: AnsweredStart | None
    secret: CkksSecretContext | None

    def _refuse(self, round_id: int, exc: PolicyMismatch) -> None:
        raise NotImplementedError

    def _send_at(self, round_id: int, stage: int, raw: bytes) -> None:
        raise NotImplementedError

    def on_keys(self, round_id: int, head: dict[str, Any], digest: bytes = b"") -> None:
        """A ``keys`` announcement (``digest``: SHA-256 of its wire bytes): start the key
        setup, or answer a copy of the one already answered with the same messages."""
        answered = self.keys_answered
        replay = None if answered is None else answered.replay_for(round_id, digest)
        if replay is not None and answered is not None:
            for raw in replay:
                self._send_at(round_id, answered.stage, raw)
            return
        if round_id <= self.last_round or round_id <= self.keysetup_round:
            log.warning("refused a key setup of round %d", round_id)
            return
        self.keysetup = None
        self.keys_answered = None
        if self.policy is not None:
            try:
                self.clock.check(round_id, time.time())
                ectx = self.policy.check_keys(head, self.t.client_id)
            except PolicyMismatch as exc:
                self._refuse(round_id, exc)
                return
            self.clock.advance(round_id, time.time())
        try:
            if self.policy is None:
                ectx = _unpinned_epoch(head)
            if not ectx.is_client(self.t.client_id):
                return
            identity = self.keys.identity if (self.keys and ectx.config.active) else None
            from secagg.protocols.keysetup import KeySetupClient  # CKKS: the ckks extra

            # Passive key setup lets the server learn the key: only a client run without
            # identity keys (--insecure) accepts it; a server cannot downgrade the others.
            ks = KeySetupClient(ectx, self.t.client_id, identity=identity,
                                trust_relay=self.keys is None)
            msgs = [encode(m) for m in ks.start()]
            stage = int(head["first_stage"])
        except (ProtocolError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("round %d: cannot take part in the key setup: %s", round_id, exc)
            return
        self.keysetup, self.keysetup_round = ks, round_id
        self.keys_answered = AnsweredStart(round_id, digest, stage, tuple(msgs))
        for raw in msgs:
            self._send_at(round_id, stage, raw)

    def on_keysetup(self, round_id: int, stage: int, payload: memoryview) -> None:
        """A key-setup message of the current epoch's session."""
        assert self.keysetup is not None
        self.keys_answered = None  # the server moved the setup on: a copy is stale now
        try:
            out = self.keysetup.receive_data(bytes(payload))
        except ProtocolError as exc:
            log.warning("round %d: key setup failed: %s", round_id, exc)
            self.keysetup = None
            return
        for raw in out:
            self._send_at(round_id, stage, raw)
        if self.keysetup.stage.value == "done":
            self.secret = self.keysetup.secret_context
            self.keysetup = None


def _unpinned_epoch(head: dict[str, Any]) -> EpochContext:
    """The epoch context exactly as the server announced it (no policy)."""
    vks = head["verify_keys"]
    return EpochContext(
        config=SecAggConfig(**head["config"]), epoch=int(head["epoch"]),
        client_ids=[int(c) for c in head["members"]],
        verify_keys=None if vks is None else {
            int(c): VerifyKey.from_bytes(bytes.fromhex(k)) for c, k in vks.items()})

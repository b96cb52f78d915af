"""Shared CKKS test scaffolding: cached keyrings, sample messages, a hand-cranked driver.

SEAL's memory pool never shrinks and TenSEAL holds the GIL: keep vectors tiny and reuse one
key epoch per (protocol, preset, active) across tests where a fresh key is not the point.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from secagg.protocols import RoundContext, SecAggConfig, create_client, create_server
from secagg.protocols.ckks_harness import CkksKeyring, setup_keys
from secagg.protocols.messages import (
    CkksInput,
    EncryptedSum,
    KeyAdvert,
    KeyConfirm,
    KeyDelivery,
    KeyDistribution,
    KeyRoster,
    KeyRosterEntry,
    Message,
    MsgType,
)
from secagg.protocols.transitions import ClientStage, ServerStage
from tests.protocols.helpers import make_config, make_inputs, reveal_honestly, roundtrip

CKKS_ONLY_CLIENT_STAGES = {ClientStage.AWAIT_KEY, ClientStage.AWAIT_SUM}
CKKS_ONLY_SERVER_STAGES = {ServerStage.DISTRIBUTE, ServerStage.CONFIRM}


def ckks_samples(round_id: int = 1, sender: int = 0) -> dict[MsgType, Message]:
    """A well-formed message of every CKKS type (not necessarily sensible for a round)."""
    k = bytes(range(32))
    return {
        MsgType.KEY_ADVERT: KeyAdvert(round_id, sender, k),
        MsgType.KEY_ROSTER: KeyRoster(round_id, (KeyRosterEntry(sender, k),)),
        MsgType.KEY_DISTRIBUTION: KeyDistribution(round_id, sender, b"ctx", b"", ((1, b"c"),)),
        MsgType.KEY_DELIVERY: KeyDelivery(round_id, 1, b"ctx", b"", b"c"),
        MsgType.KEY_CONFIRM: KeyConfirm(round_id, sender, k),
        MsgType.CKKS_INPUT: CkksInput(round_id, sender, (b"chunk",)),
        MsgType.ENCRYPTED_SUM: EncryptedSum(round_id, (0, 1, 2), (b"chunk",)),
    }


def ckks_config(protocol: str = "ckks", n: int = 4, **kw: Any) -> SecAggConfig:
    """A CKKS config with zero dropout/corruption rates unless given (any k, t allowed)."""
    return make_config(protocol, n=n, **kw)


@functools.lru_cache(maxsize=16)
def _keyring(cfg: SecAggConfig, members: tuple[int, ...]) -> CkksKeyring:
    return setup_keys(cfg, members).keys


def keyring(cfg: SecAggConfig, members: Iterable[int] | None = None) -> CkksKeyring:
    """One key epoch per (config, members), shared by every test that asks."""
    ids = tuple(sorted(range(cfg.n) if members is None else members))
    return _keyring(cfg, ids)


class CkksDriver:
    """Drives one CKKS round by hand through the wire codec (like helpers.Driver)."""

    def __init__(self, cfg: SecAggConfig, *, dim: int = 3, round_id: int = 1,
                 keys: CkksKeyring | None = None, seed: int = 0) -> None:
        ids = list(range(cfg.n))
        self.keys = keys or keyring(cfg)
        self.identities = dict(self.keys.identities)
        self.ctx = RoundContext(
            config=cfg, round_id=round_id, dim=dim, client_ids=ids,
            verify_keys={i: self.identities[i].verify_key for i in ids} if cfg.active else None,
            ckks_fingerprint=self.keys.fingerprint)
        self.server = create_server(self.ctx, public=self.keys.public)
        self.clients = {i: create_client(self.ctx, i, identity=self.identities.get(i),
                                         key=self.keys.secret(i)) for i in ids}
        self.xs = make_inputs(ids, dim, seed, cfg.clip)
        self.inbox: dict[int, Message] = {}
        self.auto_reveal = True

    def _up(self, cid: int, msgs: list[Message]) -> None:
        for m in msgs:
            self.server.receive(cid, roundtrip(m))

    def start(self, skip: Iterable[int] = ()) -> None:
        for cid, c in self.clients.items():
            if cid not in set(skip) and c.stage is ClientStage.NEW:
                self._up(cid, c.start(self.xs[cid]))

    def close(self) -> dict[int, Message]:
        """As :meth:`tests.protocols.helpers.Driver.close` (``auto_reveal`` included)."""
        closing = self.server.stage
        self.inbox = self.server.close_stage(self.server.expected - self.server.received)
        if self.auto_reveal and closing is ServerStage.ADVERTISE:
            reveal_honestly(self)
        return self.inbox

    def deliver(self, skip: Iterable[int] = ()) -> None:
        for cid, msg in self.inbox.items():
            if cid not in set(skip):
                self._up(cid, self.clients[cid].receive(roundtrip(msg)))

    def run(self, skip: Iterable[int] = ()) -> None:
        """Start everyone not in ``skip`` and run to the end, ``skip`` never answering."""
        self.start(skip)
        while self.server.stage is not ServerStage.DONE:
            self.close()
            self.deliver(skip)

"""Shared test scaffolding: configs, inputs and a hand-cranked round driver."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from secagg.protocols import RoundContext, SecAggConfig, create_client, create_server, wire
from secagg.protocols.harness import STAGES
from secagg.protocols.messages import Message
from secagg.protocols.transitions import ClientStage, ServerStage
from secagg.sign import SigningKey

SOME_SEED = bytes(range(32))
"""Any agreed graph seed, for tests that need a graph but no round (a round derives its seed
from the revealed nonces: :func:`secagg.protocols.graph.graph_seed`)."""


def make_config(protocol: str = "secagg", n: int = 4, **kw: Any) -> SecAggConfig:
    """A config with zero dropout/corruption rates unless given (so any k, t is allowed)."""
    kw.setdefault("dropout_rate", 0.0)
    kw.setdefault("corruption_rate", 0.0)
    return SecAggConfig(protocol=protocol, n=n, **kw)


def make_inputs(ids: Iterable[int], dim: int, seed: int = 0, clip: float = 1.0) -> dict[int, Any]:
    rng = np.random.default_rng(seed)
    return {i: rng.uniform(-clip, clip, dim) for i in ids}


def bound(cfg: SecAggConfig, count: int) -> float:
    """Worst-case fixed-point error of a sum of ``count`` nearest-rounded encodings."""
    return count * 2.0 ** -(cfg.scale + 1) + 1e-12


def roundtrip(msg: Message) -> Message:
    return wire.decode(wire.encode(msg))


class Driver:
    """Drives the participants of one round by hand, through the wire codec."""

    def __init__(self, cfg: SecAggConfig, *, dim: int = 3, round_id: int = 1,
                 ids: Iterable[int] | None = None, seed: int = 0) -> None:
        ids = list(range(cfg.n)) if ids is None else list(ids)
        self.identities = {i: SigningKey.generate() for i in ids} if cfg.active else {}
        self.ctx = RoundContext(
            config=cfg, round_id=round_id, dim=dim, client_ids=ids,
            verify_keys={i: k.verify_key for i, k in self.identities.items()} or None)
        self.server = create_server(self.ctx)
        self.clients = {i: create_client(self.ctx, i, identity=self.identities.get(i))
                        for i in ids}
        self.xs = make_inputs(ids, dim, seed, cfg.clip)
        self.inbox: dict[int, Message] = {}
        self.sent: dict[int, list[Message]] = {}
        self.auto_reveal = True

    def _up(self, cid: int, msgs: list[Message]) -> None:
        self.sent[cid] = msgs
        for m in msgs:
            self.server.receive(cid, roundtrip(m))

    def start(self, skip: Iterable[int] = ()) -> None:
        """Start every client still in NEW (and not in ``skip``)."""
        for cid, c in self.clients.items():
            if cid not in set(skip) and c.stage is ClientStage.NEW:
                self._up(cid, c.start(self.xs[cid]))

    def close(self) -> dict[int, Message]:
        """Close the server's stage. With ``auto_reveal`` (the default), closing the advertise
        stage also runs the honest commit-reveal exchange of the graph nonces, so the inbox
        holds the rosters, as it did before the reveal stage existed; tests of the reveal
        stage itself set ``auto_reveal = False``."""
        closing = self.server.stage
        missing = self.server.expected - self.server.received
        self.inbox = self.server.close_stage(missing)
        if self.auto_reveal and closing is ServerStage.ADVERTISE:
            reveal_honestly(self)
        return self.inbox

    def deliver(self, skip: Iterable[int] = ()) -> None:
        for cid, msg in self.inbox.items():
            if cid not in set(skip):
                self._up(cid, self.clients[cid].receive(roundtrip(msg)))

    def step(self, skip: Iterable[int] = ()) -> dict[int, Message]:
        """Close the stage and deliver its output to everyone not in ``skip``."""
        out = self.close()
        if self.server.stage is not ServerStage.DONE:
            self.deliver(skip)
        return out

    def run(self, drop: dict[str, set[int]] | None = None) -> Any:
        drop = drop or {}
        gone = set(drop.get("advertise", ()))
        if self.server.stage is ServerStage.ADVERTISE:
            self.start(gone)
        while self.server.stage is not ServerStage.DONE:
            self.close()
            if self.server.stage is ServerStage.DONE:
                break
            upto = STAGES[: STAGES.index(self.server.stage.value) + 1]
            gone |= {i for s in upto for i in drop.get(s, ())}
            self.deliver(gone)
        return self.server.result

    def expected_sum(self, included: Iterable[int]) -> Any:
        return sum((self.xs[i] for i in included), np.zeros(self.ctx.dim))


def reveal_honestly(d: Any) -> None:
    """Deliver the commitment lists in ``d.inbox``, hand every reveal to the server and close
    the reveal stage; ``d.inbox`` then holds the rosters."""
    for cid, msg in d.inbox.items():
        for m in d.clients[cid].receive(roundtrip(msg)):
            d.server.receive(cid, roundtrip(m))
    d.inbox = d.server.close_stage(d.server.expected - d.server.received)

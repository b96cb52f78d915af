"""``SecAggWorkflow``: the server side of our protocols over a Flower ``Grid``.

It plays the sans-IO server (:func:`secagg.protocols.create_server`) and carries its messages as
``train`` Messages with a ``"secagg"`` ConfigRecord (wire bytes in ``"data"``). Each stage is
one ``grid.send_and_receive``; whoever returns an error reply (its ClientApp raised), sends
nothing usable, or is not back before ``timeout`` is reported to the server as missing
(``close_stage(missing)``), so the round completes when at least the threshold survive.

Flower node ids are mapped to protocol ids ``0..n-1`` in ascending node-id order each round.
CKKS: before the first round, and whenever the sampled nodes change, a key setup runs over the
same carrier (:mod:`secagg.protocols.keysetup`: a leader client generates the key, the server relays
AEAD ciphertexts and keeps only the public context). The decrypted sum is held by the clients;
with ``reveal_ckks_sum=True`` (needed to hand the aggregate to a Flower ``Strategy``) they
return it and the workflow checks that all of them agree.

Used as ``DefaultWorkflow(fit_workflow=SecAggWorkflow("secagg+"))`` (see
:mod:`secagg.fl_core.flower`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from secagg.fl_core.flower._state import RECORD, config_to_json, join_frames, split_frames
from secagg.fl_core.flower.mod import SUM_RECORD
from secagg.protocols.config import ProtocolKind, SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import ConfigError, ProtocolError, RemoteProtocolError
from secagg.protocols.harness import create_server
from secagg.protocols.keysetup import EpochKeys, KeySetupServer
from secagg.protocols.messages import Message as ProtoMessage
from secagg.protocols.participant import ServerBase
from secagg.protocols.transitions import ServerStage
from secagg.protocols.wire import encode

__all__ = ["FlowerRound", "SecAggWorkflow"]

log = logging.getLogger(__name__)


@dataclass
class FlowerRound:
    """One round over Flower: the sum, who is in it, traffic (wire bytes) and wall time."""

    aggregate: npt.NDArray[np.float64] | None
    included: tuple[int, ...]
    weight_total: float
    node_of: dict[int, int]
    """Protocol id -> Flower node id."""
    seconds: float
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    fit_replies: dict[int, RecordDict] = field(default_factory=dict, repr=False)
    """The app's train reply (arrays emptied) per protocol id, from the first stage."""

    @property
    def included_nodes(self) -> tuple[int, ...]:
        """Flower node ids whose input is in the sum."""
        return tuple(self.node_of[c] for c in self.included)

    @property
    def mean(self) -> npt.NDArray[np.float64] | None:
        """The (weighted) mean update, if the sum is known to the server."""
        if self.aggregate is None or self.weight_total <= 0:
            return None
        return self.aggregate / self.weight_total


class SecAggWorkflow:
    """Our SecAgg / SecAgg+ / CKKS / ckks+mask rounds over a Flower ``Grid``."""

    def __init__(self, protocol: str, *, timeout: float | None = None,
                 reveal_ckks_sum: bool = True, **config_args: Any) -> None:
        """``config_args`` are :class:`secagg.protocols.config.SecAggConfig` keywords except ``n``
        (the number of sampled nodes, set each round). Passive mode only.

        Raises:
            ConfigError: unknown protocol (the rest is validated each round, when ``n`` is
                known).
            TypeError: ``n`` given.
        """
        if "n" in config_args:
            raise TypeError("n is set per round from the sampled nodes")
        try:
            self.kind = ProtocolKind(protocol)
        except ValueError:
            raise ConfigError(f"unknown protocol {protocol!r}") from None
        self.protocol = self.kind.value
        self.timeout = timeout
        self.reveal_ckks_sum = reveal_ckks_sum
        self.config_args = dict(config_args)
        self._epoch: tuple[tuple[int, ...], EpochKeys, dict[int, int]] | None = None
        self._epoch_no = 0
        self.last: FlowerRound | None = None
        """The last round run (diagnostics and benchmarks)."""

    def config(self, n: int) -> SecAggConfig:
        """The config of a round of ``n`` clients.

        Raises:
            ConfigError, TypeError: as :class:`SecAggConfig`.
        """
        return SecAggConfig(protocol=self.protocol, n=n, **self.config_args)

    # -- carrier ---------------------------------------------------------------------------

    def _exchange(self, grid: Grid, contents: Mapping[int, RecordDict], node_of: dict[int, int],
                  group: str) -> dict[int, Message]:
        msgs = [Message(content=c, dst_node_id=node_of[cid], message_type=MessageType.TRAIN,
                        group_id=group) for cid, c in contents.items()]
        cid_of = {nid: cid for cid, nid in node_of.items()}
        out: dict[int, Message] = {}
        for r in grid.send_and_receive(msgs, timeout=self.timeout):
            cid = cid_of.get(r.metadata.src_node_id)
            if r.has_error():
                log.warning("node %s failed (counted missing): %s", r.metadata.src_node_id,
                            str(r.error.reason)[-300:])
            if cid is not None and cid in contents and not r.has_error():
                out[cid] = r
        return out

    def _drive(self, grid: Grid, server: ServerBase[Any], first: Mapping[int, RecordDict],
               node_of: dict[int, int], group: str, step: dict[str, Any],
               acct: FlowerRound) -> tuple[dict[int, Message], dict[int, Message]]:
        """Run the session to the end; return (first replies, final replies).

        Raises:
            ThresholdError: fewer than the threshold remain.
            ProtocolError: the server aborted.
        """
        replies = self._exchange(grid, first, node_of, group)
        first_replies = replies
        while True:
            for cid, r in replies.items():
                self._feed(server, cid, r, acct)
            out = server.close_stage(server.expected - server.received)
            if not out:
                return first_replies, {}
            wire = _encode_once(out)
            for cid, data in wire.items():
                acct.bytes_down[cid] = acct.bytes_down.get(cid, 0) + len(data)
            replies = self._exchange(grid, {cid: RecordDict({RECORD: ConfigRecord(
                {**step, "data": join_frames([data])})}) for cid, data in wire.items()},
                node_of, group)
            if server.stage is ServerStage.DONE:
                return first_replies, replies

    @staticmethod
    def _feed(server: ServerBase[Any], cid: int, reply: Message, acct: FlowerRound) -> None:
        rec = reply.content.config_records.get(RECORD)
        data = rec.get("data") if rec is not None else None
        if not isinstance(data, bytes):
            return
        acct.bytes_up[cid] = acct.bytes_up.get(cid, 0) + len(data)
        try:
            for frame in split_frames(data):
                server.receive_data(cid, frame)
        except ProtocolError:
            pass  # recorded by the server; the sender is barred and reported missing

    # -- CKKS key epochs -------------------------------------------------------------------

    def _keys(self, grid: Grid, nodes: tuple[int, ...]) -> tuple[EpochKeys, dict[int, int]]:
        if self._epoch is not None and self._epoch[0] == nodes:
            return self._epoch[1], self._epoch[2]
        self._epoch_no += 1
        node_of = dict(enumerate(nodes))
        cfg = self.config(len(nodes))
        ectx = EpochContext(config=cfg, epoch=self._epoch_no, client_ids=list(node_of))
        server = KeySetupServer(ectx)
        common: dict[str, Any] = {"phase": "keys", "config": config_to_json(cfg),
                                  "epoch": self._epoch_no, "clients": list(node_of)}
        first = {cid: RecordDict({RECORD: ConfigRecord({**common, "cid": cid})})
                 for cid in node_of}
        acct = FlowerRound(None, (), 0.0, node_of, 0.0)
        self._drive(grid, server, first, node_of, f"keys-{self._epoch_no}",
                    {"phase": "keys-step"}, acct)
        keys = server.keys
        holders = {i: node_of[c] for i, c in enumerate(keys.holders)}
        self._epoch = (nodes, keys, holders)
        return keys, holders

    # -- a round ---------------------------------------------------------------------------

    def run_round(self, grid: Grid, fit: Mapping[int, RecordDict], *, round_id: int,
                  ) -> FlowerRound:
        """One round over the nodes that are the keys of ``fit`` (each gets its train content).

        Raises:
            ThresholdError: fewer than the threshold remain at some stage.
            ProtocolError: the server aborted; CKKS: clients revealed different sums.
            ConfigError: too few nodes for the protocol.
        """
        t0 = time.perf_counter()
        nodes = tuple(sorted(fit))
        node_of = dict(enumerate(nodes))
        keys: EpochKeys | None = None
        if self.kind.is_ckks:
            keys, node_of = self._keys(grid, nodes)
        cfg = self.config(len(node_of))
        dim = _dim(fit[node_of[0]])
        ctx = RoundContext(config=cfg, round_id=round_id, dim=dim, client_ids=list(node_of),
                           ckks_fingerprint=keys.fingerprint if keys else None)
        server = create_server(ctx, public=keys.public if keys else None)
        common: dict[str, Any] = {"phase": "start", "config": config_to_json(cfg),
                                  "round": round_id, "dim": dim, "clients": list(node_of)}
        if keys is not None:
            common["fingerprint"] = keys.fingerprint
        first = {}
        for cid, nid in node_of.items():
            content = fit[nid].copy()  # shallow: we only add our record
            content.config_records[RECORD] = ConfigRecord({**common, "cid": cid})
            first[cid] = content
        acct = FlowerRound(None, (), 0.0, node_of, 0.0)
        step = {"phase": "step", "round": round_id, "reveal": self.reveal_ckks_sum}
        first_r, last_r = self._drive(grid, server, first, node_of, str(round_id), step, acct)
        acct.fit_replies = {cid: r.content for cid, r in first_r.items()}
        if cfg.is_ckks:
            self._ckks_result(last_r, acct)
        else:
            res = server.result
            acct.aggregate, acct.included = res.values, res.included
            acct.weight_total = res.weight_total
        acct.seconds = time.perf_counter() - t0
        self.last = acct
        return acct

    @staticmethod
    def _ckks_result(replies: dict[int, Message], acct: FlowerRound) -> None:
        sums = []
        for r in replies.values():
            arr = r.content.array_records.get(SUM_RECORD)
            meta = r.content.config_records.get("secagg.sum_meta")
            if arr is None or meta is None:
                continue
            inc = tuple(int(i) for i in cast(list[int], meta["included"]))
            sums.append((np.asarray(arr.to_numpy_ndarrays()[0], dtype=np.float64), inc,
                         float(cast(float, meta["weight_total"]))))
        if not sums:
            return
        for s in sums[1:]:
            if s[1] != sums[0][1] or not np.array_equal(s[0], sums[0][0]):
                raise RemoteProtocolError("clients revealed different sums")
        acct.aggregate, acct.included, acct.weight_total = sums[0]

    def __call__(self, grid: Grid, context: Any) -> None:
        """Run one fit round for a ``LegacyContext`` (``DefaultWorkflow(fit_workflow=...)``)."""
        from secagg.fl_core.flower.legacy import legacy_fit_round

        legacy_fit_round(self, grid, context)


def _dim(content: RecordDict) -> int:
    """Values the app will send: the size of the global model in the train content."""
    total = sum(int(x.size) for rec in content.array_records.values()
                for x in rec.to_numpy_ndarrays())
    return max(total, 1)


def _encode_once(out: Mapping[int, ProtoMessage]) -> dict[int, bytes]:
    cache: dict[int, tuple[ProtoMessage, bytes]] = {}
    for m in out.values():
        cache.setdefault(id(m), (m, encode(m)))
    return {cid: cache[id(m)][1] for cid, m in out.items()}

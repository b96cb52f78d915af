"""``SecAggWorkflow``: the server side of our protocols over a Flower ``Grid``.

It plays the sans-IO server (:func:`secagg.protocols.create_server`) and carries its messages as
``train`` Messages with a ``"secagg"`` ConfigRecord (wire bytes in ``"data"``). Each stage is
one push of Messages and a poll for their replies (:mod:`.stage_wait`); whoever returns an error
reply (its ClientApp raised, or the node refused the round), is seen dead (the SuperLink says
``NODE_UNAVAILABLE``, or no longer lists it: the stage ends without waiting for it), sends
nothing usable, or is not back before ``timeout`` is reported to the server as missing
(``close_stage(missing)``), so the round completes when at least the threshold survive. Nodes
of ``fit`` that the grid no longer lists are left out of a round before it starts.

Two ways to run it:

- **with the federation's policy** (:meth:`SecAggWorkflow.from_policy`, the same file the
  nodes pin, :mod:`secagg.fl_core.flower.policy`): the round's config is the policy's rule for
  the cohort size, its digest is bound into the round context, the protocol ids are the nodes'
  own card ids (asked once per node, signed in active mode: :mod:`.identify`), and in active
  mode ``keys`` (the allowlist folder of client cards) gives every client's verify key. With a
  ``[dp]`` table the workflow charges the accountant before each round
  (:class:`secagg.fl_core.flower.privacy.RoundAccountant`), refuses a round past the budget,
  subtracts the released noise and reports epsilon. Nodes with a policy take part only in
  such rounds.
- **without** (``SecAggWorkflow("secagg+", clip=1.0)``): passive mode, the config for the
  sampled ``n``, protocol ids ``0..n-1`` in ascending node-id order. Only nodes that opted in to
  trusting the server (``secagg-insecure``) take part.

CKKS: before the first round, and whenever the sampled nodes change, a key setup runs over the
same carrier (:mod:`secagg.protocols.keysetup`: a leader client generates the key, the server
relays AEAD ciphertexts and keeps only the public context). The decrypted sum is held by the
clients; with ``reveal_ckks_sum=True`` (needed to hand the aggregate to a Flower ``Strategy``)
they return it and the workflow checks that all of them agree.

Used as ``DefaultWorkflow(fit_workflow=SecAggWorkflow(...))`` (see
:mod:`secagg.fl_core.flower`), or :meth:`SecAggWorkflow.run_round` from a Message-API app.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from secagg.fl_core.flower._state import RECORD, config_to_json, join_frames, split_frames
from secagg.fl_core.flower.identify import NodeIds
from secagg.fl_core.flower.legacy import legacy_fit_round
from secagg.fl_core.flower.mod import SUM_RECORD
from secagg.fl_core.flower.policy import FederationPolicy
from secagg.fl_core.flower.privacy import RoundAccountant
from secagg.fl_core.flower.result import FlowerRound
from secagg.fl_core.flower.stage_wait import exchange, online_nodes
from secagg.fl_core.identity import keyfiles
from secagg.fl_core.identity.keys import Allowlist
from secagg.protocols.config import ProtocolKind, SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import ConfigError, ProtocolError, RemoteProtocolError, ThresholdError
from secagg.protocols.harness import create_server
from secagg.protocols.keysetup import EpochKeys, KeySetupServer
from secagg.protocols.messages import Message as ProtoMessage
from secagg.protocols.participant import ServerBase
from secagg.protocols.server import SecAggServer
from secagg.protocols.transitions import ServerStage
from secagg.protocols.wire import encode
from secagg.sign import VerifyKey

__all__ = ["FlowerRound", "SecAggWorkflow"]

log = logging.getLogger(__name__)


class SecAggWorkflow:
    """Our SecAgg / SecAgg+ / CKKS / ckks+mask rounds over a Flower ``Grid``."""

    def __init__(self, protocol: str | None = None, *,
                 policy: str | Path | FederationPolicy | None = None,
                 keys: str | Path | Allowlist | None = None,
                 accountant_file: str | Path | None = None, timeout: float | None = None,
                 reveal_ckks_sum: bool = True, poll_interval: float = 0.1,
                 **config_args: Any) -> None:
        """Without ``policy``: ``config_args`` are :class:`secagg.protocols.config.SecAggConfig`
        keywords except ``n`` (the number of sampled nodes, set each round); passive mode.
        With ``policy`` (the federation's policy file, or its :class:`FederationPolicy`, as
        the nodes pin it): no ``config_args``; ``keys`` is the allowlist (a folder of client
        cards, or an :class:`Allowlist`) in active mode; ``accountant_file`` keeps the DP
        accountant across restarts. ``timeout`` bounds each stage (None: no bound); replies
        are pulled every ``poll_interval`` seconds, and a stage ends early once every node has
        replied or been seen dead (:mod:`secagg.fl_core.flower.stage_wait`).

        Raises:
            ConfigError: unknown protocol, a protocol other than the policy's, active mode
                without a policy or without ``keys``, or config arguments beside a policy.
            NodePolicyError: the policy file is unusable.
            TypeError: ``n`` given.
            KeyFileError, InsecureKeyFile, KeyBindingError: a card in ``keys`` is bad.
            DpConfigError: ``accountant_file`` belongs to another mechanism.
        """
        if "n" in config_args:
            raise TypeError("n is set per round from the sampled nodes (or by the policy)")
        if policy is not None and not isinstance(policy, FederationPolicy):
            policy = FederationPolicy.load(policy)
        if policy is not None:
            if config_args:
                raise ConfigError(f"the policy fixes the config; got {sorted(config_args)}")
            protocol = protocol or policy.base.protocol.value
        elif config_args.get("active"):
            raise ConfigError("active mode over Flower needs the federation's policy and the "
                              "allowlist: SecAggWorkflow.from_policy(path, keys=folder)")
        try:
            self.kind = ProtocolKind(protocol)
        except ValueError:
            raise ConfigError(f"unknown protocol {protocol!r}") from None
        if policy is not None and policy.base.protocol is not self.kind:
            raise ConfigError(f"protocol {protocol!r} is not the policy's")
        self.protocol = self.kind.value
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.reveal_ckks_sum = reveal_ckks_sum
        self.config_args = dict(config_args)
        self.policy = policy
        self.allowlist = _allowlist(keys) if policy is not None and policy.active else None
        if policy is not None and policy.active and self.allowlist is None:
            raise ConfigError("active mode needs keys= (the allowlist folder of client cards)")
        self.ids = NodeIds(self.allowlist, timeout, poll_interval) if policy is not None else None
        self.accountant = (RoundAccountant(policy, state_file=accountant_file)
                           if policy is not None and policy.dp is not None else None)
        self._epoch: tuple[tuple[tuple[int, int], ...], EpochKeys, dict[int, int]] | None = None
        self._epoch_no = 0
        self.last: FlowerRound | None = None
        """The last round run (diagnostics and benchmarks)."""

    @classmethod
    def from_policy(cls, policy: str | Path | FederationPolicy, *,
                    keys: str | Path | Allowlist | None = None, **kwargs: Any
                    ) -> SecAggWorkflow:
        """The workflow of the federation whose policy file the nodes pin (its node-only
        keys are ignored); ``kwargs`` as the constructor (``timeout``, ``reveal_ckks_sum``,
        ``accountant_file``).

        Raises:
            NodePolicyError: the policy file is unusable; and as the constructor.
        """
        return cls(policy=policy, keys=keys, **kwargs)

    def config(self, n: int) -> SecAggConfig:
        """The config of a round of ``n`` clients.

        Raises:
            ConfigError, TypeError: as :class:`SecAggConfig`.
        """
        if self.policy is not None:
            return self.policy.round_config(n)
        return SecAggConfig(protocol=self.protocol, n=n, **self.config_args)

    def _epoch_config(self, n: int) -> SecAggConfig:
        """A CKKS epoch's config: the policy's full one (what a node's ``check_keys``
        expects), else the sampled ``n``'s."""
        return self.policy.base if self.policy is not None else self.config(n)

    def _verify_keys(self, ids: list[int]) -> dict[int, VerifyKey] | None:
        if self.allowlist is None:
            return None
        return {cid: self.allowlist[cid].identity for cid in ids}

    # -- carrier ---------------------------------------------------------------------------

    def _exchange(self, grid: Grid, contents: Mapping[int, RecordDict], node_of: dict[int, int],
                  group: str, acct: FlowerRound | None = None) -> dict[int, Message]:
        """One stage: the usable replies by protocol id (:func:`.stage_wait.exchange`: it
        ends once every node has replied or been seen dead, at the latest at ``timeout``)."""
        msgs = [Message(content=c, dst_node_id=node_of[cid], message_type=MessageType.TRAIN,
                        group_id=group) for cid, c in contents.items()]
        cid_of = {nid: cid for cid, nid in node_of.items()}
        got = exchange(grid, msgs, timeout=self.timeout, poll=self.poll_interval)
        if acct is not None:
            for nid, t in got.dead.items():
                acct.seen_dead.setdefault(nid, got.started_at + t)
        return {cid_of[nid]: r for nid, r in got.replies.items()
                if nid in cid_of and cid_of[nid] in contents}

    def _drive(self, grid: Grid, server: ServerBase[Any], first: Mapping[int, RecordDict],
               node_of: dict[int, int], group: str, step: dict[str, Any],
               acct: FlowerRound) -> tuple[dict[int, Message], dict[int, Message]]:
        """Run the session to the end; return (first replies, final replies).

        Raises:
            ThresholdError: fewer than the threshold remain.
            ProtocolError: the server aborted.
        """
        replies = self._exchange(grid, first, node_of, group, acct)
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
                node_of, group, acct)
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

    def _keys(self, grid: Grid, node_of: dict[int, int]) -> tuple[EpochKeys, dict[int, int]]:
        members = tuple(sorted(node_of.items()))
        if self._epoch is not None and self._epoch[0] == members:
            return self._epoch[1], self._epoch[2]
        self._epoch_no += 1
        cfg = self._epoch_config(len(node_of))
        ids = list(node_of)
        vks = self._verify_keys(ids)
        ectx = EpochContext(config=cfg, epoch=self._epoch_no, client_ids=ids, verify_keys=vks)
        server = KeySetupServer(ectx)
        common: dict[str, Any] = {"phase": "keys", "config": config_to_json(cfg),
                                  "epoch": self._epoch_no, "clients": ids}
        if vks is not None:
            common["verify_keys"] = [vks[c].to_bytes() for c in ids]
        first = {cid: RecordDict({RECORD: ConfigRecord({**common, "cid": cid})})
                 for cid in node_of}
        acct = FlowerRound(None, (), 0.0, node_of, 0.0)
        self._drive(grid, server, first, node_of, f"keys-{self._epoch_no}",
                    {"phase": "keys-step"}, acct)
        keys = server.keys
        if self.policy is not None:  # protocol ids are the nodes' own
            holders = {c: node_of[c] for c in keys.holders}
        else:
            holders = {i: node_of[c] for i, c in enumerate(keys.holders)}
        self._epoch = (members, keys, holders)
        return keys, holders

    # -- a round ---------------------------------------------------------------------------

    def _cohort(self, grid: Grid, nodes: tuple[int, ...]) -> dict[int, int]:
        """Protocol id -> node id of the round's clients."""
        if self.ids is None or self.policy is None:
            return dict(enumerate(nodes))
        node_of = self.ids.cohort(grid, nodes)
        if len(node_of) < self.policy.min_cohort:
            raise ThresholdError(f"{len(node_of)} of {len(nodes)} nodes identified; the "
                                 f"policy's smallest cohort is {self.policy.min_cohort}")
        if len(node_of) > self.policy.n:
            raise ConfigError(f"{len(node_of)} nodes sampled; the policy's largest cohort is "
                              f"{self.policy.n}")
        return node_of

    def run_round(self, grid: Grid, fit: Mapping[int, RecordDict], *, round_id: int,
                  ) -> FlowerRound:
        """One round over the nodes that are the keys of ``fit`` (each gets its train content).

        Raises:
            ThresholdError: fewer than the threshold remain at some stage (or, with a policy,
                fewer than its smallest cohort identified themselves).
            PrivacyBudgetExhausted: (DP) the round would exceed the budget: nothing was sent.
            ProtocolError: the server aborted; CKKS: clients revealed different sums.
            ConfigError: too few or too many nodes for the protocol (or the policy), or an
                update length other than the policy's ``dim``.
        """
        t0 = time.perf_counter()
        if self.accountant is not None:
            self.accountant.check(round_id)  # a spent budget sends nothing, not even a hello
        node_of = self._cohort(grid, _alive(grid, fit))
        keys: EpochKeys | None = None
        if self.kind.is_ckks:
            keys, node_of = self._keys(grid, node_of)
        cfg = self.config(len(node_of))
        ids = list(node_of)
        dim = _dim(fit[node_of[ids[0]]])
        if self.policy is not None and self.policy.dim not in (None, dim):
            raise ConfigError(f"the model has {dim} values; the policy pins {self.policy.dim}")
        vks = self._verify_keys(ids)
        ctx = RoundContext(config=cfg, round_id=round_id, dim=dim, client_ids=ids,
                           verify_keys=vks, ckks_fingerprint=keys.fingerprint if keys else None,
                           policy_digest=self.policy.digest(dim) if self.policy else None)
        server = create_server(ctx, public=keys.public if keys else None)
        if self.accountant is not None:
            self.accountant.charge(round_id)  # charged (and saved) before anything goes out
        first = self._starts(fit, node_of, cfg, round_id, dim, vks, keys)
        acct = FlowerRound(None, (), 0.0, node_of, 0.0)
        step = {"phase": "step", "round": round_id, "reveal": self.reveal_ckks_sum}
        first_r, last_r = self._drive(grid, server, first, node_of, str(round_id), step, acct)
        acct.fit_replies = {cid: r.content for cid, r in first_r.items()}
        if cfg.is_ckks:
            self._ckks_result(last_r, acct)
        else:
            self._result(server, acct, cfg, round_id)
        acct.seconds = time.perf_counter() - t0
        self.last = acct
        return acct

    def _starts(self, fit: Mapping[int, RecordDict], node_of: dict[int, int],
                cfg: SecAggConfig, round_id: int, dim: int,
                vks: dict[int, VerifyKey] | None, keys: EpochKeys | None,
                ) -> dict[int, RecordDict]:
        """Each client's first message: its train content plus our record."""
        common: dict[str, Any] = {"phase": "start", "config": config_to_json(cfg),
                                  "round": round_id, "dim": dim, "clients": list(node_of)}
        if keys is not None:
            common["fingerprint"] = keys.fingerprint
        if self.policy is not None:
            common["policy"] = json.dumps(self.policy.document(dim), sort_keys=True)
        if vks is not None:
            common["verify_keys"] = [vks[c].to_bytes() for c in node_of]
        first = {}
        for cid, nid in node_of.items():
            content = fit[nid].copy()  # shallow: we only add our record
            content.config_records[RECORD] = ConfigRecord({**common, "cid": cid})
            first[cid] = content
        return first

    def _result(self, server: ServerBase[Any], acct: FlowerRound, cfg: SecAggConfig,
                round_id: int) -> None:
        res = server.result
        acct.aggregate, acct.included = res.values, res.included
        acct.weight_total = res.weight_total
        if self.accountant is None:
            return
        released = server.released_noise if isinstance(server, SecAggServer) else {}
        acct.released_noise = released
        acct.aggregate = self.accountant.release(res.values, released, n=len(acct.node_of),
                                                 t=cfg.threshold, round_id=round_id)
        acct.epsilon, acct.delta = self.accountant.epsilon, self.accountant.delta

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
        legacy_fit_round(self, grid, context)


def _alive(grid: Grid, fit: Mapping[int, RecordDict]) -> tuple[int, ...]:
    """The nodes of ``fit`` that the grid still lists (a SuperLink lists only ONLINE nodes:
    :func:`.stage_wait.online_nodes`); those it no longer lists are left out of the round."""
    online = online_nodes(grid)
    nodes = tuple(sorted(fit))
    if online is None:
        return nodes
    gone = [n for n in nodes if n not in online]
    if gone:
        log.warning("nodes %s are gone from the grid's node list: left out of the round", gone)
    return tuple(n for n in nodes if n in online)


def _allowlist(keys: str | Path | Allowlist | None) -> Allowlist | None:
    if keys is None or isinstance(keys, Allowlist):
        return keys
    return keyfiles.load_allowlist(keys)


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

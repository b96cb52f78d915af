"""``secagg_mod``: the client side of our protocols as a Flower client mod.

Node config (set by the node's operator, e.g. ``flower-supernode --node-config
"secagg-policy='/etc/secagg/policy.toml'"``; see :mod:`secagg.fl_core.flower.policy` for the
file format):

- ``secagg-policy`` (:data:`~secagg.fl_core.flower.policy.NODE_POLICY_KEY`): path of the node's
  policy file. Every round is checked against it before anything secret exists: protocol,
  active mode, thresholds, fixed point, cohort size, ``dim``, DP and the peers' verify keys
  (``ClientPolicy.check_start`` / ``check_keys``, the ZeroMQ client's own checks); the round's
  context carries the policy digest; in active mode the node's identity and the peers' cards
  come from its key folder and its protocol id is its card's id, never one the server assigns.
  With a ``[dp]`` table the node clips its update and adds its share of the distributed noise.
- ``secagg-insecure`` (:data:`~secagg.fl_core.flower.policy.NODE_INSECURE_KEY`) = ``true``:
  no policy; the node takes the server's parameters as sent (passive only; tests and trusted
  servers). Without either key the mod refuses every round (:class:`NoNodePolicy`).

Put it in the ``ClientApp``'s ``mods`` in place of Flower's ``secaggplus_mod``. It acts only on
``train`` messages that carry our ``"secagg"`` ConfigRecord (anything else passes through):

* ``phase="hello"`` (policy nodes): answers with its protocol id, signed with its identity key
  in active mode over the server's nonce and its Flower node id.
* ``phase="start"``: refused unless its round id is above every earlier one this node started
  (and, with a policy, not further ahead than the round-id rate allows); then the policy check;
  with ``[dp]`` the node's own privacy ledger is charged and saved (:mod:`.ledger`: refused
  past its policy's rounds or epsilon budget, or at a round id it charged before); then the
  app (``call_next``) trains, every ArrayRecord of its reply is flattened into one
  float vector ``x`` (``num_examples`` is the weight in weighted mode), the round's participant
  (:func:`secagg.protocols.create_client`) is built and returns its first message; the reply
  keeps the app's metrics and configs, its arrays are emptied (as ``secaggplus_mod`` does).
* ``phase="step"``: hands the server's wire bytes to the participant, returns its answer.
  CKKS: when the participant is done it holds the decrypted sum; it is written to
  ``Context.state`` and, if the server asked (``reveal``), returned as an ArrayRecord.
* ``phase="keys"`` / ``"keys-step"``: the CKKS key setup
  (:class:`secagg.protocols.keysetup.KeySetupClient`); the secret context stays in
  ``Context.state``.

Between messages the participant lives in ``Context.state`` (see :mod:`._state`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from secagg.ckks import CkksSecretContext
from secagg.fl_core.flower._state import (
    RECORD,
    STATE,
    config_from_json,
    dumps_state,
    join_frames,
    loads_state,
    split_frames,
)
from secagg.fl_core.flower.ledger import charge_node_ledger
from secagg.fl_core.flower.policy import (
    NodePolicy,
    NodePolicyError,
    hello_payload,
    load_last_round,
    load_node_policy,
    node_mode,
    save_last_round,
)
from secagg.fl_core.flower.privacy import noised_update
from secagg.fl_core.runtime.policy import PolicyMismatch, RoundClock, policy_digest
from secagg.fl_core.runtime.rounds import RoundStart
from secagg.protocols.client import SecAggClient
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import Aggregate
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from secagg.protocols.harness import create_client
from secagg.protocols.keysetup import KeySetupClient
from secagg.protocols.participant import ClientBase
from secagg.protocols.transitions import ClientStage
from secagg.protocols.wire import encode

__all__ = ["SUM_RECORD", "flatten_arrays", "secagg_mod", "simulation_node_config"]

log = logging.getLogger(__name__)

SUM_RECORD = "secagg.sum"
"""ArrayRecord name of a CKKS client's decrypted sum in its reply (when revealed)."""
_NONCE_BYTES = 32


def flatten_arrays(content: RecordDict) -> npt.NDArray[np.float64]:
    """Every array of every ArrayRecord in ``content``, raveled and concatenated (float64)."""
    parts = [np.asarray(a, dtype=np.float64).ravel()
             for rec in content.array_records.values() for a in rec.to_numpy_ndarrays()]
    return np.concatenate(parts) if parts else np.zeros(0)


def _get(cfg: ConfigRecord, key: str, kind: type) -> Any:
    value = cfg.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RemoteProtocolError(f"record field {key!r} missing or not {kind.__name__}")
    return value


def _ints(cfg: ConfigRecord, key: str) -> tuple[int, ...]:
    values = _get(cfg, key, list)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise RemoteProtocolError(f"record field {key!r} must list ints")
    return tuple(values)


def secagg_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run our protocol's client for ``train`` messages that carry the ``"secagg"`` record.

    Raises:
        NoNodePolicy: the node config names no policy and does not opt in to
            ``secagg-insecure`` (nothing runs).
        NodePolicyError, KeyFileError: the node's policy file or key folder is unusable.
        BudgetExhausted, LedgerError: the node's privacy ledger refuses the round (rounds or
            epsilon budget spent) or is unusable; nothing was computed or sent.
        PolicyMismatch: the server's round differs from the node's policy (the field is
            named), a round id is replayed (also one in the privacy ledger) or runs ahead
            too fast; nothing was computed or sent.
        ProtocolError: the server's message is illegal, or this client aborted earlier in the
            round (Flower turns every exception into an error reply: the server counts this
            client as missing).
        InputError, TypeError: the app's update is unusable (NaN, beyond the clip range).
    """
    if msg.metadata.message_type != MessageType.TRAIN or RECORD not in msg.content.config_records:
        return call_next(msg, ctxt)
    path = node_mode(ctxt.node_config)
    cfg = msg.content.config_records[RECORD]
    phase = _get(cfg, "phase", str)
    out = RecordDict()
    try:
        if phase == "hello":
            out.config_records[RECORD] = _hello(ctxt, cfg, path)
            return Message(out, reply_to=msg)
        if phase == "start":
            node = None if path is None else load_node_policy(path)
            out, frames = _start(msg, ctxt, cfg, call_next, node)
        elif phase == "keys":
            frames = _keys_start(ctxt, cfg, None if path is None else load_node_policy(path))
        elif phase in ("step", "keys-step"):
            frames = _step(ctxt, cfg, out)
        else:
            raise RemoteProtocolError(f"unknown phase {phase!r}")
    except PolicyMismatch as exc:
        log.warning("node %s refused a %s message, not my policy: %s", ctxt.node_id, phase, exc)
        raise
    out.config_records[RECORD] = ConfigRecord({"data": join_frames(frames)})
    return Message(out, reply_to=msg)


def _state(ctxt: Context) -> ConfigRecord:
    if STATE not in ctxt.state.config_records:
        ctxt.state.config_records[STATE] = ConfigRecord({})
    return ctxt.state.config_records[STATE]


def _save(ctxt: Context, participant: ClientBase[Any] | None) -> None:
    st = _state(ctxt)
    if participant is None or participant.stage in (ClientStage.DONE, ClientStage.ABORTED):
        st.pop("participant", None)
    else:
        st["participant"] = dumps_state(participant)


def _hello(ctxt: Context, cfg: ConfigRecord, path: Any) -> ConfigRecord:
    """This node's protocol id (and, active mode, its signature binding it to this node)."""
    if path is None:
        raise NodePolicyError("a node without a policy (secagg-insecure) has no protocol id "
                              "of its own to announce")
    node = load_node_policy(path)
    nonce = _get(cfg, "nonce", bytes)
    if len(nonce) != _NONCE_BYTES:
        raise RemoteProtocolError(f"hello nonce must be {_NONCE_BYTES} bytes")
    rec = ConfigRecord({"client_id": node.client_id})
    if node.keys is not None:
        rec["signature"] = node.keys.identity.sign(hello_payload(
            node_id=ctxt.node_id, client_id=node.client_id, nonce=nonce))
    return rec


def _check_round_id(ctxt: Context, node: NodePolicy | None, round_id: int,
                    clock: RoundClock | None) -> None:
    """Raises PolicyMismatch (``round_id``): not after the last round this node started, or
    (with a policy) further ahead than the round-id rate allows (grinding)."""
    st = _state(ctxt)
    if "last_round" not in st and node is not None and node.state_file is not None:
        got = load_last_round(node.state_file)
        if got is not None:
            st["last_round"], st["last_round_time"] = got
    last = st.get("last_round")
    if isinstance(last, int) and round_id <= last:
        raise PolicyMismatch("round_id", f"round {round_id} is not after round {last}: "
                             "refused (no round id gets two inputs)")
    if clock is not None and isinstance(last, int):
        seen = st.get("last_round_time")
        clock.last, clock.last_time = last, float(seen) if isinstance(seen, float) else 0.0
        clock.check(round_id, time.time())


def _advance(ctxt: Context, node: NodePolicy | None, round_id: int) -> None:
    """Record the round id before any secret exists: one start per round id."""
    st = _state(ctxt)
    st["last_round"], st["last_round_time"] = round_id, time.time()
    if node is not None and node.state_file is not None:
        save_last_round(node.state_file, round_id)


def _pinned_context(ctxt: Context, cfg: ConfigRecord, node: NodePolicy) -> RoundContext:
    """The round's context from the node's own policy, after every check.

    Raises:
        PolicyMismatch: the field that differs (or ``record``: a malformed start).
    """
    try:
        clients = _ints(cfg, "clients")
        config = json.loads(_get(cfg, "config", str))
        doc = cfg.get("policy")
        vks = cfg.get("verify_keys")
        if vks is not None and not (isinstance(vks, list)
                                    and all(isinstance(k, bytes) for k in vks)):
            raise TypeError("verify_keys must list bytes")
        start = RoundStart(
            round_id=_get(cfg, "round", int), step=0, first_stage=0, config=config,
            dim=_get(cfg, "dim", int), clients=clients,
            verify_keys=None if vks is None else dict(zip(
                clients, cast(list[bytes], vks), strict=True)),
            state=None, ckks_fingerprint=cast(bytes | None, cfg.get("fingerprint")),
            policy=None if doc is None else json.loads(cast(str, doc)))
    except (RemoteProtocolError, ValueError, TypeError) as exc:
        raise PolicyMismatch("record", f"malformed round start: {exc}") from None
    if not isinstance(start.config, dict) or not (start.policy is None
                                                   or isinstance(start.policy, dict)):
        raise PolicyMismatch("record", "config and policy must be JSON objects")
    sent_cid = cfg.get("cid")
    if sent_cid is not None and sent_cid != node.client_id:
        raise PolicyMismatch("cid", f"the server calls me {sent_cid!r}; my card says "
                             f"{node.client_id}")
    try:
        pinned = node.pinned(start.dim)
    except (ConfigError, ValueError) as exc:
        raise PolicyMismatch("dim", str(exc)) from None
    _check_round_id(ctxt, node, start.round_id,
                    RoundClock(pinned.round_burst, pinned.min_round_interval_s))
    return pinned.check_start(start, node.client_id)


def _unpinned_context(ctxt: Context, cfg: ConfigRecord) -> tuple[RoundContext, int]:
    """The context exactly as the server sent it (``secagg-insecure``: the server decides)."""
    round_id = _get(cfg, "round", int)
    _check_round_id(ctxt, None, round_id, None)
    doc = cfg.get("policy")
    digest = None if not isinstance(doc, str) else policy_digest(json.loads(doc))
    fp = cfg.get("fingerprint")
    ctx = RoundContext(config=config_from_json(_get(cfg, "config", str)), round_id=round_id,
                       dim=_get(cfg, "dim", int), client_ids=_ints(cfg, "clients"),
                       ckks_fingerprint=fp if isinstance(fp, bytes) else None,
                       policy_digest=digest)
    if ctx.config.active:
        raise LocalProtocolError("active mode needs a node policy (secagg-policy): an "
                                 "insecure node has no identity")
    return ctx, _get(cfg, "cid", int)


def _start(msg: Message, ctxt: Context, cfg: ConfigRecord, call_next: ClientAppCallable,
           node: NodePolicy | None) -> tuple[RecordDict, list[bytes]]:
    if node is None:
        ctx, cid = _unpinned_context(ctxt, cfg)
    else:
        ctx, cid = _pinned_context(ctxt, cfg, node), node.client_id
        charge_node_ledger(node, ctx.round_id)  # its own books, before the app trains
    _advance(ctxt, node, ctx.round_id)
    key: CkksSecretContext | None = None
    if ctx.config.is_ckks:
        raw = _state(ctxt).get("ckks_secret")
        if not isinstance(raw, bytes):
            raise LocalProtocolError("no CKKS key: this node missed the key setup")
        key = CkksSecretContext.from_bytes(raw)
    identity = node.keys.identity if (node is not None and node.keys is not None
                                      and ctx.config.active) else None
    client = create_client(ctx, cid, identity=identity, key=key)
    reply = call_next(msg, ctxt)
    if reply.has_error():
        raise LocalProtocolError(f"the ClientApp failed: {reply.error}")
    content = reply.content
    x = flatten_arrays(content)
    if node is not None and x.size != ctx.dim:
        raise PolicyMismatch("dim", f"the app's update has {x.size} values; the round has "
                             f"{ctx.dim}")
    weight = _weight(content) if ctx.config.weighted else None
    dp = node.federation.dp if node is not None else None
    if dp is not None:
        assert isinstance(client, SecAggClient)  # DP policies run secagg/secagg+ only
        x, seeds = noised_update(x, dp, n=len(ctx.client_ids), t=ctx.config.threshold)
        client.hold_removable(seeds)
    frames = [encode(m) for m in client.start(x, weight=weight)]
    for rec in content.array_records.values():
        rec.clear()
    content.config_records.pop(RECORD, None)
    _save(ctxt, client)
    return content, frames


def _weight(content: RecordDict) -> float:
    metrics = content.metric_records.get("fitres.num_examples")
    num = metrics.get("num_examples") if metrics is not None else None
    if not isinstance(num, (int, float)):
        raise LocalProtocolError("weighted mode needs the app's num_examples (a legacy "
                                 "FitRes reply)")
    return float(num)


def _keys_start(ctxt: Context, cfg: ConfigRecord, node: NodePolicy | None) -> list[bytes]:
    members = _ints(cfg, "clients")
    if node is None:
        ectx = EpochContext(config=config_from_json(_get(cfg, "config", str)),
                            epoch=_get(cfg, "epoch", int), client_ids=members)
        # No policy: a passive CKKS key setup trusts the Flower server as a relay (it could
        # substitute the key-exchange keys and learn the key; docs/threat-model.md).
        client = KeySetupClient(ectx, _get(cfg, "cid", int), trust_relay=True)
    else:
        vks = cfg.get("verify_keys")
        try:
            if vks is not None and not (isinstance(vks, list)
                                        and all(isinstance(k, bytes) for k in vks)):
                raise TypeError("verify_keys must list bytes")
            head = {"members": members, "epoch": cfg.get("epoch"),
                    "config": json.loads(_get(cfg, "config", str)),
                    "verify_keys": None if vks is None else {
                        str(c): k.hex() for c, k in zip(members, cast(list[bytes], vks),
                                                        strict=True)}}
        except (ValueError, TypeError) as exc:
            raise PolicyMismatch("record", f"malformed key announcement: {exc}") from None
        ectx = node.pinned(node.federation.dim or 1).check_keys(head, node.client_id)
        active = ectx.config.active
        # A passive key setup is accepted only where the node's own policy says passive.
        client = KeySetupClient(ectx, node.client_id, trust_relay=not active,
                                identity=node.keys.identity if node.keys and active else None)
    frames = [encode(m) for m in client.start()]
    _save(ctxt, client)
    return frames


def _step(ctxt: Context, cfg: ConfigRecord, out: RecordDict) -> list[bytes]:
    raw = _state(ctxt).get("participant")
    if not isinstance(raw, bytes):
        raise LocalProtocolError("no protocol session in progress on this node")
    client = cast(ClientBase[Any], loads_state(raw))
    frames: list[bytes] = []
    try:
        for data in split_frames(_get(cfg, "data", bytes)):
            frames += client.receive_data(data)
    finally:
        _save(ctxt, client)
    if client.stage is ClientStage.DONE:
        _finish(ctxt, cfg, client, out)
    return frames


def _finish(ctxt: Context, cfg: ConfigRecord, client: ClientBase[Any], out: RecordDict) -> None:
    st = _state(ctxt)
    if isinstance(client, KeySetupClient):
        st["ckks_secret"] = client.secret_context.serialize_secret()
        return
    result = getattr(client, "result", None)
    if isinstance(result, Aggregate):  # CKKS: this client decrypted the sum
        rnd = cfg.get("round")
        st["sum_round"] = rnd if isinstance(rnd, int) else 0
        st["sum_weight"] = float(result.weight_total)
        ctxt.state.array_records[SUM_RECORD] = ArrayRecord([result.values])
        if cfg.get("reveal") is True:
            out.array_records[SUM_RECORD] = ArrayRecord([result.values])
            out.config_records["secagg.sum_meta"] = ConfigRecord({
                "included": list(result.included), "weight_total": float(result.weight_total)})


def simulation_node_config(entries: Mapping[str, Any] | None = None, *,
                           by_partition: Mapping[int, Mapping[str, Any]] | None = None,
                           ) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A mod that gives nodes node-config entries where Flower's simulation engine cannot
    (``run_simulation`` sets only ``partition-id`` and ``num-partitions``): ``entries`` for
    every node, ``by_partition[pid]`` for partition ``pid``. It plays the operator's
    ``--node-config`` in a simulation; an entry the node config already has is never changed.
    Put it before :func:`secagg_mod`."""
    common = dict(entries or {})
    per = {pid: dict(v) for pid, v in (by_partition or {}).items()}

    def node_config_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        pid = ctxt.node_config.get("partition-id")
        extra = {**common, **(per.get(pid, {}) if isinstance(pid, int) else {})}
        for key, value in extra.items():
            ctxt.node_config.setdefault(key, value)
        return call_next(msg, ctxt)

    return node_config_mod

"""``secagg_mod``: the client side of our protocols as a Flower client mod.

Put it in the ``ClientApp``'s ``mods`` in place of Flower's ``secaggplus_mod``. It acts only on
``train`` messages that carry our ``"secagg"`` ConfigRecord (anything else passes through):

* ``phase="start"`` (first stage of a round; refused unless its round id is above every
  earlier one this node started, so one round id never gets two masked inputs): calls the
  app (``call_next``) to train, flattens every ArrayRecord of its reply into one float vector
  ``x`` (``num_examples`` is the weight in weighted mode), builds the round's participant
  (:func:`secagg.protocols.create_client`) from the public facts in the record and returns its
  first message; the reply keeps the app's metrics and configs but its arrays are emptied
  (as ``secaggplus_mod`` does).
* ``phase="step"``: hands the server's wire bytes to the participant, returns its answer.
  CKKS: when the participant is done it holds the decrypted sum; it is written to
  ``Context.state`` and, if the server asked (``reveal``), returned as an ArrayRecord.
* ``phase="keys"`` / ``"keys-step"``: the CKKS key setup
  (:class:`secagg.protocols.keysetup.KeySetupClient`); the secret context stays in
  ``Context.state``.

Between messages the participant lives in ``Context.state`` (see :mod:`._state`).
"""

from __future__ import annotations

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
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import Aggregate
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import LocalProtocolError, RemoteProtocolError
from secagg.protocols.harness import create_client
from secagg.protocols.keysetup import KeySetupClient
from secagg.protocols.participant import ClientBase
from secagg.protocols.transitions import ClientStage
from secagg.protocols.wire import encode

__all__ = ["SUM_RECORD", "flatten_arrays", "secagg_mod"]

SUM_RECORD = "secagg.sum"
"""ArrayRecord name of a CKKS client's decrypted sum in its reply (when revealed)."""


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


def secagg_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run our protocol's client for ``train`` messages that carry the ``"secagg"`` record.

    Raises:
        ProtocolError: the server's message is illegal, or this client aborted earlier in the
            round (Flower turns the exception into an error reply: the server counts this
            client as missing).
        InputError, TypeError: the app's update is unusable (NaN, beyond the clip range).
    """
    if msg.metadata.message_type != MessageType.TRAIN or RECORD not in msg.content.config_records:
        return call_next(msg, ctxt)
    cfg = msg.content.config_records[RECORD]
    phase = _get(cfg, "phase", str)
    out = RecordDict()
    if phase == "start":
        out, frames = _start(msg, ctxt, cfg, call_next)
    elif phase == "keys":
        frames = _keys_start(ctxt, cfg)
    elif phase in ("step", "keys-step"):
        frames = _step(ctxt, cfg, out)
    else:
        raise RemoteProtocolError(f"unknown phase {phase!r}")
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


def _start(msg: Message, ctxt: Context, cfg: ConfigRecord, call_next: ClientAppCallable,
           ) -> tuple[RecordDict, list[bytes]]:
    config = config_from_json(_get(cfg, "config", str))
    round_id = _get(cfg, "round", int)
    last = _state(ctxt).get("last_round")
    if isinstance(last, int) and round_id <= last:
        raise RemoteProtocolError(f"round {round_id} is not after round {last}: refused")
    _state(ctxt)["last_round"] = round_id  # before any secret exists: one start per round id
    fp = cfg.get("fingerprint")
    ctx = RoundContext(config=config, round_id=round_id, dim=_get(cfg, "dim", int),
                       client_ids=cast(list[int], _get(cfg, "clients", list)),
                       ckks_fingerprint=fp if isinstance(fp, bytes) else None)
    key: CkksSecretContext | None = None
    if config.is_ckks:
        raw = _state(ctxt).get("ckks_secret")
        if not isinstance(raw, bytes):
            raise LocalProtocolError("no CKKS key: this node missed the key setup")
        key = CkksSecretContext.from_bytes(raw)
    client = create_client(ctx, _get(cfg, "cid", int), key=key)
    reply = call_next(msg, ctxt)
    if reply.has_error():
        raise LocalProtocolError(f"the ClientApp failed: {reply.error}")
    content = reply.content
    x = flatten_arrays(content)
    weight = None
    if config.weighted:
        metrics = content.metric_records.get("fitres.num_examples")
        num = metrics.get("num_examples") if metrics is not None else None
        if not isinstance(num, (int, float)):
            raise LocalProtocolError("weighted mode needs the app's num_examples (a legacy "
                                     "FitRes reply)")
        weight = float(num)
    frames = [encode(m) for m in client.start(x, weight=weight)]
    for rec in content.array_records.values():
        rec.clear()
    content.config_records.pop(RECORD, None)
    _save(ctxt, client)
    return content, frames


def _keys_start(ctxt: Context, cfg: ConfigRecord) -> list[bytes]:
    ectx = EpochContext(config=config_from_json(_get(cfg, "config", str)),
                        epoch=_get(cfg, "epoch", int),
                        client_ids=cast(list[int], _get(cfg, "clients", list)))
    # No PKI under Flower: passive CKKS trusts the Flower server as a relay (it could
    # substitute the key-exchange keys and learn the key; docs/threat-model.md).
    client = KeySetupClient(ectx, _get(cfg, "cid", int), trust_relay=True)
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

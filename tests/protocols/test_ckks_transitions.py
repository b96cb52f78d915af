"""Every (stage, input) pair of the CKKS tables: ``ckks``, ``ckks+mask`` (passive, active) and
the key setup. Legal moves advance; anything else fails closed (client: ABORTED, secrets
wiped, every later call refused; server: the sender is barred and the others finish)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from secagg.protocols import LocalProtocolError, RemoteProtocolError, ThresholdError
from secagg.protocols.epoch import EpochContext
from secagg.protocols.keysetup import KeySetupClient, KeySetupServer
from secagg.protocols.messages import Message, MsgType
from secagg.protocols.transitions import (
    START,
    ClientStage,
    ServerStage,
    client_table_for,
    key_setup_client_table,
    key_setup_server_table,
    server_table_for,
)
from tests.protocols.ckks_helpers import (
    CKKS_ONLY_CLIENT_STAGES,
    CKKS_ONLY_SERVER_STAGES,
    CkksDriver,
    ckks_config,
)
from tests.protocols.helpers import roundtrip
from tests.protocols.test_transitions import CLIENT_PATH, SERVER_PATH, sample

_C, _S = ClientStage, ServerStage
FLAVOURS = ("ckks", "ckks+mask", "ckks+mask/active", "keys")


def config(flavour: str) -> Any:
    if flavour in ("ckks", "keys"):
        return ckks_config("ckks", n=4)
    return ckks_config("ckks+mask", n=4, k=3, threshold=3, active=flavour.endswith("active"))


CLIENT_PATHS = {
    "ckks": [_C.NEW, _C.AWAIT_SUM, _C.DONE],
    "ckks+mask": [*CLIENT_PATH[False][:-1], _C.AWAIT_SUM, _C.DONE],
    "ckks+mask/active": [*CLIENT_PATH[True][:-1], _C.AWAIT_SUM, _C.DONE],
    "keys": [_C.NEW, _C.AWAIT_ROSTER, _C.AWAIT_KEY, _C.DONE],
}
SERVER_PATHS = {
    "ckks": [_S.MASKED_INPUT, _S.DONE],
    "ckks+mask": SERVER_PATH[False],
    "ckks+mask/active": SERVER_PATH[True],
    "keys": [_S.ADVERTISE, _S.DISTRIBUTE, _S.CONFIRM, _S.DONE],
}


class KeyDriver(CkksDriver):
    """A key setup driven by hand (start() takes no input)."""

    def __init__(self, cfg: Any, epoch: int = 0) -> None:
        ids = list(range(cfg.n))
        self.ctx = EpochContext(config=cfg, epoch=epoch, client_ids=ids)  # type: ignore[assignment]
        self.server = KeySetupServer(self.ctx)  # type: ignore[assignment]
        self.clients = {i: KeySetupClient(self.ctx, i, trust_relay=True)  # type: ignore[misc]
                        for i in ids}
        self.xs = dict.fromkeys(ids)
        self.inbox: dict[int, Message] = {}
        self.leader = self.ctx.leader(ids)


def driver(flavour: str) -> CkksDriver:
    d = KeyDriver(config(flavour)) if flavour == "keys" else CkksDriver(config(flavour))
    d.auto_reveal = False  # the reveal stage is one of those under test
    return d


def tables(flavour: str) -> Any:
    if flavour == "keys":
        return key_setup_client_table(), key_setup_server_table()
    cfg = config(flavour)
    return client_table_for(cfg), server_table_for(cfg)


def client_at(flavour: str, stage: ClientStage) -> tuple[CkksDriver, Message | None]:
    """Client 0 in ``stage``; also the next legal server message for it (None in NEW/DONE)."""
    d = driver(flavour)
    steps = CLIENT_PATHS[flavour].index(stage)
    if steps >= 1:
        d.start()
    for _ in range(steps - 1):
        d.close()
        d.deliver()
    nxt = d.close().get(0) if stage not in (_C.NEW, _C.DONE) else None
    assert d.clients[0].stage is stage
    return d, nxt


def wiped(client: Any) -> bool:
    if hasattr(client, "_kx"):  # key setup
        return client._kx is None and client._secret is None
    ok = client._key is None
    if hasattr(client, "_s"):
        ok = ok and not client._s.held and client._s.seed == bytearray()
    return bool(ok)


CLIENT_CASES = [(f, s) for f in FLAVOURS for s in CLIENT_PATHS[f]]


@pytest.mark.parametrize("event", [START, *MsgType])
@pytest.mark.parametrize(("flavour", "stage"), CLIENT_CASES)
def test_client_table_is_total(flavour: str, stage: ClientStage, event: Any) -> None:
    d, legal = client_at(flavour, stage)
    client = d.clients[0]
    target = tables(flavour)[0].next(stage, event)
    if event == START:
        call = lambda: client.start(d.xs[0])  # noqa: E731
    else:
        msg = legal if (legal is not None and legal.TYPE == event) else sample(event)
        call = lambda: client.receive(roundtrip(msg))  # noqa: E731
    if target is not None:
        out = call()
        assert client.stage is target and isinstance(out, list)
        if target is _C.DONE and flavour != "keys":
            assert client.result is not None and wiped(client)
        return
    with pytest.raises(LocalProtocolError if event == START else RemoteProtocolError):
        call()
    assert client.stage is _C.ABORTED and wiped(client)
    with pytest.raises(LocalProtocolError):  # fail closed, stay closed
        client.receive(sample(MsgType.ENCRYPTED_SUM))
    with pytest.raises(LocalProtocolError):
        client.start(d.xs[0])


def server_at(flavour: str, stage: ServerStage) -> tuple[CkksDriver, int, list[Message]]:
    """The server collecting ``stage``; the held-back party (the key-setup leader, else
    client 0) has its own message for that stage returned instead of sent."""
    d = driver(flavour)
    h = d.leader if isinstance(d, KeyDriver) else 0
    if stage is _S.DONE:
        d.run()
        return d, h, []
    d.start(skip={h})
    held = d.clients[h].start(d.xs[h])
    for _ in range(SERVER_PATHS[flavour].index(stage)):
        for m in held:
            d.server.receive(h, roundtrip(m))
        d.close()
        d.deliver(skip={h})
        held = d.clients[h].receive(roundtrip(d.inbox[h]))
    assert d.server.stage is stage
    return d, h, held


SERVER_CASES = [(f, s) for f in FLAVOURS for s in SERVER_PATHS[f]]


@pytest.mark.parametrize("msg_type", list(MsgType))
@pytest.mark.parametrize(("flavour", "stage"), SERVER_CASES)
def test_server_table_is_total(flavour: str, stage: ServerStage, msg_type: MsgType) -> None:
    d, h, held = server_at(flavour, stage)
    server = d.server
    if stage is _S.DONE:
        with pytest.raises(LocalProtocolError):
            server.receive(h, sample(msg_type, sender=h))
        return
    legal = [m for m in held if m.TYPE == msg_type]
    skip: set[int] = set()
    if tables(flavour)[1].accepts(stage, msg_type):
        server.receive(h, roundtrip(legal[0]))
        assert h in server.received and server.stage is stage
    else:
        with pytest.raises(RemoteProtocolError) as info:
            server.receive(h, sample(msg_type, sender=h, bits=d.ctx.config.bits))
        assert info.value.party == h and server.stage is stage and h in server.barred
        skip = {h}
    if flavour == "keys" and skip and stage is _S.DISTRIBUTE:
        with pytest.raises(ThresholdError):  # the leader alone sends here: next epoch
            d.close()
        return
    if skip and stage is _S.REVEAL:  # a committer that never reveals aborts the round
        with pytest.raises(ThresholdError, match="did not reveal"):
            d.close()
        return
    while server.stage is not _S.DONE:  # the honest parties are unharmed
        d.close()
        d.deliver(set() if server.stage is _S.REVEAL else skip)  # every committer reveals
    if flavour == "keys":
        assert set(server.keys.holders) >= set(d.clients) - skip
        return
    result = d.clients[1].result
    assert result is not None and set(result.included) >= {1, 2, 3}
    want = sum((d.xs[i] for i in result.included), np.zeros(3))
    np.testing.assert_allclose(result.values, want, atol=1e-3)


def test_paths_cover_every_table_and_stage() -> None:
    stages = {s for p in CLIENT_PATHS.values() for s in p} | {_C.ABORTED}
    assert stages >= CKKS_ONLY_CLIENT_STAGES
    assert {s for p in SERVER_PATHS.values() for s in p} >= CKKS_ONLY_SERVER_STAGES
    for flavour in FLAVOURS:  # every legal move lies on the path, in order
        ct, st = tables(flavour)
        path = CLIENT_PATHS[flavour]
        assert len(ct.moves) == len(path) - 1
        for (stage, _), nxt in ct.moves.items():
            assert path.index(nxt) == path.index(stage) + 1
        spath = SERVER_PATHS[flavour]
        assert list(st.close) == spath[:-1]
        for stage, nxt in st.close.items():
            assert spath.index(nxt) == spath.index(stage) + 1

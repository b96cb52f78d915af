"""Every (stage, input) pair of both roles: legal moves advance, everything else fails closed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from secagg.packing import packed_size
from secagg.protocols import LocalProtocolError, RemoteProtocolError, ThresholdError
from secagg.protocols.messages import (
    AdvertiseKeys,
    Commitments,
    ConsistencyRequest,
    ConsistencySignature,
    MaskedInput,
    Message,
    MsgType,
    Reveal,
    Roster,
    RosterEntry,
    ShareKeys,
    SharesRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocols.transitions import (
    START,
    ClientStage,
    ServerStage,
    client_table,
    server_table,
)
from tests.protocols.ckks_helpers import (
    CKKS_ONLY_CLIENT_STAGES,
    CKKS_ONLY_SERVER_STAGES,
    ckks_samples,
)
from tests.protocols.helpers import Driver, make_config, roundtrip


def sample(t: MsgType, sender: int = 0, round_id: int = 1, dim: int = 3, bits: int = 8) -> Message:
    """A well-formed message of type ``t`` (not necessarily sensible for the round)."""
    k1, k2 = bytes(range(32)), bytes(range(1, 33))
    return {
        MsgType.ADVERTISE_KEYS: AdvertiseKeys(round_id, sender, k1, k2, k1),
        MsgType.COMMITMENTS: Commitments(round_id, ((0, k1), (1, k2))),
        MsgType.REVEAL: Reveal(round_id, sender, k2),
        MsgType.ROSTER: Roster(round_id, (RosterEntry(1, k1, k2),), ((0, k1), (1, k2))),
        MsgType.SHARE_KEYS: ShareKeys(round_id, sender, ()),
        MsgType.SHARES_RELAY: SharesRelay(round_id, ()),
        MsgType.MASKED_INPUT: MaskedInput(round_id, sender, dim, bits,
                                          bytes(packed_size(dim, bits))),
        MsgType.CONSISTENCY_REQUEST: ConsistencyRequest(round_id, (0, 1, 2)),
        MsgType.CONSISTENCY_SIGNATURE: ConsistencySignature(round_id, sender, bytes(64)),
        MsgType.UNMASK_REQUEST: UnmaskRequest(round_id, (0,), ()),
        MsgType.UNMASK_RESPONSE: UnmaskResponse(round_id, sender, (), ()),
        **ckks_samples(round_id, sender),  # SecAgg participants must refuse these too
    }[t]


CLIENT_PATH = {
    False: [ClientStage.NEW, ClientStage.AWAIT_COMMITMENTS, ClientStage.AWAIT_ROSTER,
            ClientStage.AWAIT_SHARES, ClientStage.AWAIT_UNMASK, ClientStage.DONE],
    True: [ClientStage.NEW, ClientStage.AWAIT_COMMITMENTS, ClientStage.AWAIT_ROSTER,
           ClientStage.AWAIT_SHARES,
           ClientStage.AWAIT_CONSISTENCY, ClientStage.AWAIT_UNMASK, ClientStage.DONE],
}


def client_at(active: bool, stage: ClientStage) -> tuple[Driver, Any]:
    """A round of 3 whose client 0 is in ``stage``; returns the driver and the next legal
    server message for client 0 (None in NEW and DONE)."""
    d = Driver(make_config("secagg", n=3, active=active))
    d.auto_reveal = False  # the reveal stage is one of those under test
    steps = CLIENT_PATH[active].index(stage)
    if steps >= 1:
        d.start()
    for _ in range(steps - 1):
        d.step()
    nxt = None
    if stage not in (ClientStage.NEW, ClientStage.DONE):
        nxt = d.close()[0]
    if stage is ClientStage.DONE:
        d.close()
    assert d.clients[0].stage is stage
    return d, nxt


@pytest.mark.parametrize("event", [START, *MsgType])
@pytest.mark.parametrize(("active", "stage"),
                         [(a, s) for a in (False, True) for s in CLIENT_PATH[a]])
def test_client_table_is_total(active: bool, stage: ClientStage, event: Any) -> None:
    d, legal = client_at(active, stage)
    client = d.clients[0]
    table = client_table(secure=True, active=active)
    target = table.next(stage, event)
    if event == START:
        call = lambda: client.start(d.xs[0])  # noqa: E731
    else:
        msg = legal if (legal is not None and legal.TYPE == event) else sample(event)
        call = lambda: client.receive(roundtrip(msg))  # noqa: E731
    if target is not None:
        out = call()
        assert client.stage is target and isinstance(out, list)
        return
    with pytest.raises(LocalProtocolError if event == START else RemoteProtocolError):
        call()
    assert client.stage is ClientStage.ABORTED
    assert client._s.seed == bytearray() and not client._s.held and client._s.s_key is None
    with pytest.raises(LocalProtocolError):  # fail closed, stay closed
        client.receive(sample(MsgType.UNMASK_REQUEST))
    with pytest.raises(LocalProtocolError):
        client.start(d.xs[0])


SERVER_PATH = {
    False: [ServerStage.ADVERTISE, ServerStage.REVEAL, ServerStage.SHARE,
            ServerStage.MASKED_INPUT, ServerStage.UNMASK, ServerStage.DONE],
    True: [ServerStage.ADVERTISE, ServerStage.REVEAL, ServerStage.SHARE,
           ServerStage.MASKED_INPUT,
           ServerStage.CONSISTENCY, ServerStage.UNMASK, ServerStage.DONE],
}


def server_at(active: bool, stage: ServerStage) -> tuple[Driver, list[Message]]:
    """A round of 4 (t=3) whose server collects ``stage``; client 0's own message for that
    stage is held back and returned."""
    d = Driver(make_config("secagg", n=4, active=active, threshold=3))
    d.auto_reveal = False
    held: list[Message] = []
    if stage is ServerStage.DONE:
        d.run()
        return d, held
    d.start(skip={0})
    held = d.clients[0].start(d.xs[0])
    for _ in range(SERVER_PATH[active].index(stage)):
        for m in held:
            d.server.receive(0, roundtrip(m))
        d.close()
        d.deliver(skip={0})
        held = d.clients[0].receive(roundtrip(d.inbox[0]))
    assert d.server.stage is stage
    return d, held


@pytest.mark.parametrize("msg_type", list(MsgType))
@pytest.mark.parametrize(("active", "stage"),
                         [(a, s) for a in (False, True) for s in SERVER_PATH[a]])
def test_server_table_is_total(active: bool, stage: ServerStage, msg_type: MsgType) -> None:
    d, held = server_at(active, stage)
    server = d.server
    if stage is ServerStage.DONE:
        with pytest.raises(LocalProtocolError):
            server.receive(0, sample(msg_type))
        return
    table = server_table(secure=True, active=active)
    legal = [m for m in held if m.TYPE == msg_type]
    if table.accepts(stage, msg_type):
        server.receive(0, roundtrip(legal[0]))
        assert 0 in server.received and server.stage is stage
    else:
        with pytest.raises(RemoteProtocolError) as info:
            server.receive(0, sample(msg_type, bits=d.ctx.config.bits))
        assert info.value.party == 0
        assert server.stage is stage and 0 in server.barred
        if stage is ServerStage.REVEAL:  # a committer that never reveals aborts the round
            with pytest.raises(ThresholdError, match="did not reveal"):
                d.close()
            return
    # the honest clients are unharmed: the round completes without (or with) client 0
    while server.stage is not ServerStage.DONE:
        d.close()
        if server.stage is ServerStage.REVEAL:
            d.deliver()  # every committer reveals (client 0 too, if it committed)
        elif server.stage is not ServerStage.DONE:
            d.deliver(skip={0})
    included = server.result.included
    assert set(included) >= {1, 2, 3}
    np.testing.assert_allclose(server.result.values, d.expected_sum(included), atol=1e-3)


def test_plain_tables() -> None:
    ct = client_table(secure=False, active=False)
    assert ct.moves == {(ClientStage.NEW, START): ClientStage.DONE}
    st = server_table(secure=False, active=False)
    assert st.first is ServerStage.MASKED_INPUT and st.close == {
        ServerStage.MASKED_INPUT: ServerStage.DONE}


def test_close_stage_contract() -> None:
    d = Driver(make_config("secagg", n=3))
    d.start()
    with pytest.raises(LocalProtocolError):
        d.server.close_stage({0})  # 0 did send: the driver is confused
    assert d.server.stage is ServerStage.ABORTED
    with pytest.raises(LocalProtocolError):
        d.server.close_stage(set())
    with pytest.raises(LocalProtocolError):
        _ = d.server.result


def test_paths_cover_every_stage() -> None:
    # the stages only CKKS uses are covered by tests/protocols/test_ckks_transitions.py
    only_ckks = CKKS_ONLY_CLIENT_STAGES | CKKS_ONLY_SERVER_STAGES
    assert set(CLIENT_PATH[True]) | {ClientStage.ABORTED} == set(ClientStage) - only_ckks
    assert set(SERVER_PATH[True]) | {ServerStage.ABORTED} == set(ServerStage) - only_ckks
    for active in (False, True):  # every legal move lies on the path, in order
        path = CLIENT_PATH[active]
        for (stage, _), nxt in client_table(secure=True, active=active).moves.items():
            assert path.index(nxt) == path.index(stage) + 1
        spath = SERVER_PATH[active]
        for stage, nxt in server_table(secure=True, active=active).close.items():
            assert spath.index(nxt) == spath.index(stage) + 1

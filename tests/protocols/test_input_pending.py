"""``INPUT_PENDING``: a client in one of these stages has sent nothing that depends on its
input, in every protocol. The runtime un-charges a round that ended there (issue 22), so the
claim is checked on the real participants: the input message (masked, encrypted or plain)
leaves exactly on the move out of the set, never before, and every earlier message is the
same whatever the input is."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from secagg.protocols.messages import Message, MsgType
from secagg.protocols.transitions import INPUT_PENDING, ClientStage
from tests.protocols.helpers import Driver, make_config

INPUT_TYPES = {MsgType.MASKED_INPUT, MsgType.CKKS_INPUT}


class Recorder:
    """A client participant that records, per call, its stage before and after and the types
    of the messages it returned."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[ClientStage, ClientStage, list[MsgType]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _record(self, before: ClientStage, out: list[Message]) -> list[Message]:
        self.calls.append((before, self.inner.stage, [m.TYPE for m in out]))
        return out

    def start(self, x: Any, **kw: Any) -> list[Message]:
        before = self.inner.stage
        return self._record(before, self.inner.start(x, **kw))

    def receive(self, msg: Message) -> list[Message]:
        before = self.inner.stage
        return self._record(before, self.inner.receive(msg))


def _check(calls: list[tuple[ClientStage, ClientStage, list[MsgType]]]) -> None:
    sent_input = False
    for before, after, types in calls:
        carries = bool(INPUT_TYPES & set(types))
        if before in INPUT_PENDING:
            # the input leaves exactly when the client leaves the pending stages
            assert carries == (after not in INPUT_PENDING), (before, after, types)
        else:
            assert not carries, (before, after, types)
        sent_input |= carries
    assert sent_input, "the round completed, so the input was sent"


@pytest.mark.parametrize(("protocol", "active"), [
    ("plain", False), ("secagg", False), ("secagg", True), ("secagg+", False),
    ("secagg+", True)])
def test_input_leaves_exactly_on_the_move_out_of_input_pending(protocol: str,
                                                               active: bool) -> None:
    d = Driver(make_config(protocol, n=5, active=active), dim=4)
    d.clients = {cid: Recorder(c) for cid, c in d.clients.items()}  # type: ignore[misc]
    d.start()  # (Driver.run starts clients only for protocols that begin with advertise)
    result = d.run()
    np.testing.assert_allclose(result.values, d.expected_sum(result.included), atol=1e-3)
    for rec in d.clients.values():
        _check(rec.calls)  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
def test_ckks_input_leaves_exactly_on_the_move_out_of_input_pending(protocol: str) -> None:
    pytest.importorskip("tenseal")
    from tests.protocols.ckks_helpers import CkksDriver, ckks_config

    d = CkksDriver(ckks_config(protocol, n=4), dim=4)
    d.clients = {cid: Recorder(c) for cid, c in d.clients.items()}  # type: ignore[misc]
    d.run()
    for rec in d.clients.values():
        _check(rec.calls)  # type: ignore[attr-defined]


"""A stage ends as soon as every node has replied or been seen dead (:mod:`.stage_wait`).

:class:`LinkGrid` plays a SuperLink the way Flower 1.42's does for a ServerApp: messages are
pushed and their replies pulled by message id; a node past its ``online_until`` is answered for
by the SuperLink with a ``NODE_UNAVAILABLE`` error reply from ``SUPERLINK_NODE_ID`` and is no
longer listed by ``get_node_ids`` (``InMemoryLinkState.get_message_res`` / ``get_nodes``).
The process test with real SuperNodes is in ``test_flower_deployment.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

from secagg.fl_core.flower import SecAggWorkflow
from secagg.fl_core.flower.policy import NODE_INSECURE_KEY
from secagg.fl_core.flower.stage_wait import exchange

from ._nodes import Node, default_update, fit_for, phase, server_side

__all__ = ["server_side"]  # the fixture, imported for pytest

DIM = 16


class Clock:
    """Virtual time: ``sleep`` moves it."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 1e-3)


class LinkGrid:
    """Push/pull by message id over in-process nodes. ``offline_at[node]``: the time (``clock``)
    from which the SuperLink counts ``node`` offline; ``silent``: nodes that never answer (dead,
    but their heartbeat has not lapsed); ``errors``: whether offline nodes get error replies
    (else they only leave ``get_node_ids``)."""

    def __init__(self, nodes: Mapping[int, Node], clock: Clock | None = None, *,
                 offline_at: Mapping[int, float] | None = None, silent: Iterable[int] = (),
                 errors: bool = True, kill_after: tuple[int, str, int] | None = None) -> None:
        self.nodes, self.clock = dict(nodes), clock or time.monotonic
        self.offline_at = dict(offline_at or {})
        self.silent, self.errors = set(silent), errors
        self.kill_after = kill_after  # (node, phase, nth): it dies on its nth message of phase
        self.seen: dict[tuple[int, str | None], int] = {}
        self.inbox: dict[str, Message] = {}
        self.pulls = 0

    def _offline(self, node: int) -> bool:
        return self.clock() >= self.offline_at.get(node, float("inf"))

    def get_node_ids(self) -> list[int]:
        return [n for n in self.nodes if not self._offline(n)]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for m in messages:
            mid = uuid.uuid4().hex
            m.metadata.__dict__["_message_id"] = mid
            self.inbox[mid] = m
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.pulls += 1
        out = []
        for mid in list(message_ids):
            msg = self.inbox.get(mid)
            if msg is None:
                continue
            node = msg.metadata.dst_node_id
            if self._offline(node):
                if self.errors:
                    err = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node "
                                        "Unavailable"), reply_to=msg)
                    err.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                    out.append(err)
                    del self.inbox[mid]
                continue
            key = (node, phase(msg))
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.kill_after and (node, phase(msg), self.seen[key]) == self.kill_after:
                self.silent.add(node)
                self.offline_at[node] = self.clock() + 0.3  # its heartbeat lapses soon
            if node in self.silent:
                continue
            del self.inbox[mid]
            out.append(self.nodes[node](msg))
        return out


def _msgs(nodes: Iterable[int]) -> list[Message]:
    return [Message(RecordDict({"x": ConfigRecord({"v": 1})}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in nodes]


class Echo:
    def __call__(self, msg: Message) -> Message:
        return Message(RecordDict(), reply_to=msg)


def test_all_replies_end_the_stage_at_once(server_side: None) -> None:
    clock = Clock()
    grid = LinkGrid({n: Echo() for n in (10, 11, 12)}, clock)  # type: ignore[misc]
    got = exchange(grid, _msgs((10, 11, 12)), timeout=60, clock=clock, sleep=clock.sleep)
    assert set(got.replies) == {10, 11, 12} and not got.dead and not got.timed_out
    assert got.seconds == 0 and grid.pulls == 1


def test_node_unavailable_ends_the_stage_long_before_the_timeout(server_side: None) -> None:
    """The SuperLink's error reply comes from node 1 (the SuperLink), not the dead node: it is
    mapped back through the message id."""
    clock = Clock()
    grid = LinkGrid({n: Echo() for n in (10, 11, 12)}, clock,  # type: ignore[misc]
                    offline_at={12: 3.0}, silent={12})
    got = exchange(grid, _msgs((10, 11, 12)), timeout=60, clock=clock, sleep=clock.sleep)
    assert set(got.replies) == {10, 11} and set(got.dead) == {12}
    assert got.errors[12].code == ErrorCode.NODE_UNAVAILABLE
    assert 3.0 <= got.seconds < 3.2 and not got.timed_out


def test_a_node_gone_from_the_node_list_is_dead(server_side: None) -> None:
    """A grid that sends no error reply: ``get_node_ids`` (read every ``liveness_every``)."""
    clock = Clock()
    grid = LinkGrid({n: Echo() for n in (10, 11)}, clock,  # type: ignore[misc]
                    offline_at={11: 2.0}, silent={11}, errors=False)
    got = exchange(grid, _msgs((10, 11)), timeout=60, liveness_every=1.0, clock=clock,
                   sleep=clock.sleep)
    assert set(got.replies) == {10} and set(got.dead) == {11} and 11 not in got.errors
    assert 2.0 <= got.seconds <= 3.1 and not got.timed_out


def test_control_a_silent_node_still_online_waits_the_timeout(server_side: None) -> None:
    clock = Clock()
    grid = LinkGrid({n: Echo() for n in (10, 11)}, clock, silent={11})  # type: ignore[misc]
    got = exchange(grid, _msgs((10, 11)), timeout=60, clock=clock, sleep=clock.sleep)
    assert set(got.replies) == {10} and not got.dead and got.timed_out
    assert 60 <= got.seconds < 60.2


def test_unpushed_messages_and_duplicates(server_side: None) -> None:
    class Lossy(LinkGrid):
        def push_messages(self, messages: Iterable[Message]) -> list[str]:
            ids = super().push_messages(messages)
            return [ids[0], ""]  # Flower: "" / None for a message it did not take

    clock = Clock()
    got = exchange(Lossy({n: Echo() for n in (10, 11)}, clock),  # type: ignore[misc]
                   _msgs((10, 11)), timeout=5, clock=clock, sleep=clock.sleep)
    assert set(got.replies) == {10} and set(got.errors) == {11} and got.seconds == 0
    with pytest.raises(ValueError, match="one message per node"):
        exchange(LinkGrid({}), _msgs((10, 10)), timeout=1)


def _nodes(ids: Iterable[int]) -> dict[int, Node]:
    return {100 + c: Node(100 + c, {NODE_INSECURE_KEY: True}, c, DIM) for c in ids}


def _want(nodes: Iterable[int], rnd: int) -> np.ndarray:
    return sum((default_update(n - 100, rnd, DIM).astype(np.float64) for n in nodes),
               np.zeros(DIM))


def test_a_node_dying_mid_round_is_dropped_without_waiting_the_timeout(
        server_side: None) -> None:
    """Node 104 answers the round start and the share exchange, then dies before its masked
    input; the SuperLink declares it offline 0.3 s later. The round (timeout 60 s) ends in
    seconds with the other four, the dead node reported in ``seen_dead``; the next round
    leaves it out before it starts."""
    nodes = _nodes(range(5))
    grid = LinkGrid(nodes, kill_after=(104, "step", 2))
    wf = SecAggWorkflow("secagg+", timeout=60.0, poll_interval=0.02, clip=1.0, threshold=4)
    t0, wall0 = time.monotonic(), time.time()
    res = wf.run_round(grid, fit_for(nodes, DIM), round_id=1)
    assert time.monotonic() - t0 < 20
    assert res.included_nodes == (100, 101, 102, 103)
    assert set(res.seen_dead) == {104} and wall0 < res.seen_dead[104] < time.time()
    assert res.aggregate is not None
    assert np.max(np.abs(res.aggregate - _want(res.included_nodes, 1))) < 1e-3
    res2 = wf.run_round(grid, fit_for(nodes, DIM), round_id=2)  # 104 still in fit
    assert set(res2.node_of.values()) == {100, 101, 102, 103} and not res2.seen_dead
    assert res2.included_nodes == (100, 101, 102, 103)


def test_control_a_dead_node_the_link_still_lists_costs_the_timeout(server_side: None) -> None:
    """Same death, but its heartbeat never lapses (the SuperLink keeps it online): the stage
    ends only at the workflow's timeout."""
    nodes = _nodes(range(5))

    class NeverLapses(LinkGrid):
        def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
            out = super().pull_messages(message_ids)
            self.offline_at.pop(104, None)
            return out

    grid = NeverLapses(nodes, kill_after=(104, "step", 2))
    wf = SecAggWorkflow("secagg+", timeout=1.5, poll_interval=0.02, clip=1.0, threshold=4)
    t0 = time.monotonic()
    res = wf.run_round(grid, fit_for(nodes, DIM), round_id=1)
    assert time.monotonic() - t0 >= 1.5
    assert res.included_nodes == (100, 101, 102, 103) and not res.seen_dead

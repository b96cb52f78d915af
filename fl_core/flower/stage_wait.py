"""One protocol stage over a Flower ``Grid``: push the stage's Messages, then pull replies as they
come, and end the stage as soon as every awaited node has replied or has been seen dead; the
stage ``timeout`` stays the upper bound.

What Flower (1.42) tells a ServerApp about a SuperNode that died, both from the SuperLink's
heartbeat book-keeping (a SuperNode announces a heartbeat interval and is ONLINE until
``HEARTBEAT_PATIENCE`` = 2 times that interval after its last heartbeat; one that shuts down
cleanly deactivates itself at once):

- **an error reply**: pulling the reply of a Message whose destination node is offline (its
  ``online_until`` has passed) or unknown gives an error Message with code
  ``ErrorCode.NODE_UNAVAILABLE`` (5), sent by ``SUPERLINK_NODE_ID`` (1, not the dead node: we
  map it back through ``reply_to_message_id``) -- ``flwr/server/superlink/linkstate/utils.py``
  ``check_node_availability_for_in_message`` and ``create_message_error_unavailable_res_message``,
  called by ``InMemoryLinkState.get_message_res``
  (``flwr/server/superlink/linkstate/in_memory_linkstate.py``; the SQL state does the same);
- **the node list**: ``grid.get_node_ids()`` lists only ONLINE nodes
  (``InMemoryLinkState.get_nodes`` -> ``get_node_info(statuses=[NodeStatus.ONLINE])`` after
  ``_check_and_tag_offline_nodes``), so an awaited node missing from it is gone.

Both change at the same moment on a SuperLink; the node list also covers grids that give no
error reply. Nothing else is visible to a ServerApp (a SuperNode's task heartbeats from its
ClientApps go to the SuperNode, not the SuperLink). So a killed SuperNode is seen dead within
``2 x`` its heartbeat interval after its last heartbeat: 40-60 s at Flower's fixed 30 s, about
16-20 s at the 10 s the deployment launcher sets (:mod:`._supernode`).

Any other error reply (the ClientApp raised, the message expired:
``REPLY_MESSAGE_UNAVAILABLE``/``MESSAGE_UNAVAILABLE``) also ends the wait for that node. The
caller counts every node without a usable reply as missing, exactly as a timeout: a node seen
dead is a dropout, nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

__all__ = ["StageReplies", "exchange", "online_nodes"]

log = logging.getLogger(__name__)

NODE_UNAVAILABLE = ErrorCode.NODE_UNAVAILABLE
"""The SuperLink's error code for a Message whose destination node is offline."""


@dataclass
class StageReplies:
    """What one stage brought back, keyed by destination node id."""

    replies: dict[int, Message] = field(default_factory=dict)
    """Usable replies (no error)."""
    errors: dict[int, Error] = field(default_factory=dict)
    """Error replies (the node's ClientApp raised, or the SuperLink answered for it)."""
    dead: dict[int, float] = field(default_factory=dict)
    """Nodes seen dead (``NODE_UNAVAILABLE``, or gone from ``get_node_ids``): seconds into
    the stage when seen."""
    seconds: float = 0.0
    """How long the stage waited."""
    timed_out: bool = False
    """The stage ended at its timeout with nodes still awaited."""
    started_at: float = field(default_factory=time.time)
    """Wall-clock time (``time.time()``) the stage began."""


def online_nodes(grid: Any) -> set[int] | None:
    """The node ids ``grid.get_node_ids()`` lists (on a SuperLink: the ONLINE ones), or None
    where the grid has no such method."""
    get = getattr(grid, "get_node_ids", None)
    return None if get is None else {int(n) for n in get()}


def _has_poll_api(grid: Any) -> bool:
    return callable(getattr(grid, "push_messages", None)) and callable(
        getattr(grid, "pull_messages", None))


def exchange(grid: Any, messages: Sequence[Message], *, timeout: float | None,
             poll: float = 0.1, liveness_every: float = 1.0,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> StageReplies:
    """Send one stage's ``messages`` (at most one per destination node) and collect replies
    until every node has replied or been seen dead, or ``timeout`` seconds have passed (None:
    no bound). Replies are pulled every ``poll`` seconds, ``grid.get_node_ids()`` is read every
    ``liveness_every`` seconds.

    A grid without ``push_messages``/``pull_messages`` (a test stand-in) gets one blocking
    ``send_and_receive`` instead, replies keyed by their sender.

    Raises:
        ValueError: two messages for the same node.
        Exception: whatever the grid's push, pull or ``get_node_ids`` raise (e.g. an
            ``httpx.HTTPError`` when the SuperLink is gone).
    """
    dst = [int(m.metadata.dst_node_id) for m in messages]
    if len(set(dst)) != len(dst):
        raise ValueError("one message per node and stage")
    start = clock()
    out = StageReplies()
    if not _has_poll_api(grid):
        for r in grid.send_and_receive(messages, timeout=timeout):
            _take(out, int(r.metadata.src_node_id), r, 0.0)
        out.seconds = clock() - start
        out.timed_out = len(out.replies) + len(out.errors) < len(dst)
        return out
    ids = list(grid.push_messages(messages))
    waiting: dict[str, int] = {}
    for i, node in enumerate(dst):
        mid = ids[i] if i < len(ids) else None
        if mid:
            waiting[str(mid)] = node
        else:
            out.errors[node] = Error(code=ErrorCode.UNKNOWN, reason="not pushed")
            log.warning("node %s: the SuperLink did not take its message", node)
    end = None if timeout is None else start + timeout
    next_check = start + liveness_every
    while waiting:
        _pull(grid, waiting, out, clock() - start)
        now = clock()
        if not waiting or (end is not None and now >= end):
            break
        if now >= next_check:
            next_check = now + liveness_every
            _check_alive(grid, waiting, out, now - start)
            if not waiting:
                break
        sleep(poll if end is None else max(0.0, min(poll, end - now)))
    out.seconds = clock() - start
    out.timed_out = bool(waiting)
    return out


def _take(out: StageReplies, node: int, reply: Message, at: float) -> None:
    if not reply.has_error():
        out.replies[node] = reply
        return
    out.errors[node] = reply.error
    if reply.error.code == NODE_UNAVAILABLE:
        out.dead[node] = at
        log.warning("node %s seen dead after %.1f s in the stage (the SuperLink: node "
                    "unavailable): counted missing", node, at)
    else:
        log.warning("node %s failed (counted missing): %s", node, str(reply.error.reason)[-300:])


def _pull(grid: Any, waiting: dict[str, int], out: StageReplies, at: float,
          ids: Sequence[str] | None = None) -> None:
    for r in grid.pull_messages(list(waiting) if ids is None else list(ids)):
        node = waiting.pop(str(r.metadata.reply_to_message_id), None)
        if node is not None:
            _take(out, node, r, at)


def _check_alive(grid: Any, waiting: dict[str, int], out: StageReplies, at: float) -> None:
    """Nodes missing from ``get_node_ids``: one last pull for their replies, then dead."""
    online = online_nodes(grid)
    if online is None:
        return
    gone = [mid for mid, node in waiting.items() if node not in online]
    if not gone:
        return
    _pull(grid, waiting, out, at, gone)
    for mid in gone:
        node = waiting.pop(mid, None)
        if node is not None:
            out.dead[node] = at
            log.warning("node %s seen dead after %.1f s in the stage (gone from the "
                        "SuperLink's node list): counted missing", node, at)

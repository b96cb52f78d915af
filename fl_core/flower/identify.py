"""Which protocol id stands behind each Flower node (the server's side of ``phase="hello"``).

Flower assigns node ids; our protocol ids are the client ids of the cards ``secagg keygen
client`` wrote, which each node reads from its own policy file. So the server does not assign
protocol ids to policy nodes: it asks each node it has not met yet, once, with a fresh nonce,
and in active mode checks the answer's signature (over the nonce, the Flower node id and the
claimed id, :func:`secagg.fl_core.flower.policy.hello_payload`) against the allowlist card of
the claimed id. A node that does not answer, is not allowlisted, signs wrongly, or claims an
id another node also claims is left out of the round (and asked again next time).

This protects the honest server from a node that claims another's id; a node does not rely
on it: it checks every round start against its own policy and key folder, and every peer's
messages are signed under the keys of its own folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from secagg.errors import InvalidSignature
from secagg.fl_core.flower._state import RECORD
from secagg.fl_core.flower.policy import hello_payload
from secagg.fl_core.flower.stage_wait import exchange
from secagg.fl_core.identity.keys import Allowlist
from secagg.rng import random_bytes

__all__ = ["NodeIds"]

log = logging.getLogger(__name__)

_NONCE_BYTES = 32


class NodeIds:
    """The server's map Flower node id -> protocol id, learnt by ``hello`` messages.

    ``allowlist``: the client cards (active mode: answers must be signed by the claimed
    id's identity key, and ids outside it are refused); None: passive policy, ids as claimed.
    """

    def __init__(self, allowlist: Allowlist | None, timeout: float | None,
                 poll_interval: float = 0.1) -> None:
        self.allowlist = allowlist
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.known: dict[int, int] = {}

    def cohort(self, grid: Grid, nodes: Iterable[int]) -> dict[int, int]:
        """Protocol id -> node id for the ``nodes`` that identified themselves (ascending
        protocol ids), asking the ones not met yet."""
        nodes = sorted(set(nodes))
        todo = [n for n in nodes if n not in self.known]
        if todo:
            self._hello(grid, todo)
        claims: dict[int, list[int]] = {}
        for nid in nodes:
            if nid in self.known:
                claims.setdefault(self.known[nid], []).append(nid)
        for cid, nids in claims.items():
            if len(nids) > 1:
                log.warning("nodes %s all claim protocol id %d: left out", nids, cid)
        return {cid: nids[0] for cid, nids in sorted(claims.items()) if len(nids) == 1}

    def _hello(self, grid: Grid, nodes: list[int]) -> None:
        nonces = {nid: random_bytes(_NONCE_BYTES) for nid in nodes}
        msgs = [Message(RecordDict({RECORD: ConfigRecord({"phase": "hello", "nonce": nonce})}),
                        dst_node_id=nid, message_type=MessageType.TRAIN, group_id="hello")
                for nid, nonce in nonces.items()]
        got = exchange(grid, msgs, timeout=self.timeout, poll=self.poll_interval)
        for nid, r in got.replies.items():
            if nid not in nonces:
                continue
            cid = self._check(nid, r, nonces.pop(nid))
            if cid is not None:
                self.known[nid] = cid

    def _check(self, nid: int, reply: Message, nonce: bytes) -> int | None:
        rec = reply.content.config_records.get(RECORD)
        cid = rec.get("client_id") if rec is not None else None
        if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0:
            log.warning("node %s sent no protocol id", nid)
            return None
        if self.allowlist is None:
            return cid
        card = self.allowlist.get(cid)
        sig = rec.get("signature") if rec is not None else None
        if card is None or not isinstance(sig, bytes):
            log.warning("node %s claims protocol id %d, which has no card here", nid, cid)
            return None
        try:
            card.identity.verify(sig, hello_payload(node_id=nid, client_id=cid, nonce=nonce))
        except InvalidSignature:
            log.warning("node %s claims protocol id %d without its signature", nid, cid)
            return None
        return cid

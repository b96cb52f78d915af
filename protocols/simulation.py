"""The in-memory driver shared by round and key-setup simulations.

A :class:`Simulation` wires n in-process clients to a server through the wire codec: every
message is encoded to bytes and decoded on the other side (bytes counted per client, up and
down; a message the server sends to many is encoded once, as a real server would), and every
participant call is timed with ``time.perf_counter`` (codec time included, charged to whoever
runs it). Stage names come from :attr:`Simulation.STAGES`; ``drop`` maps a stage name to the
ids that fail to send that stage's message, and a client that drops stays gone for the rest
of the session (for the final delivery after the server is done: gone if it dropped at any
stage). Tests override :meth:`to_client` / :meth:`to_server` to tamper with bytes in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from secagg.protocols.errors import LocalProtocolError, ProtocolError
from secagg.protocols.messages import Message
from secagg.protocols.participant import ClientBase, ServerBase
from secagg.protocols.transitions import ServerStage
from secagg.protocols.wire import encode

__all__ = ["Simulation", "check_drop"]


def check_drop(
    drop: Mapping[str, Iterable[int]] | None, ids: set[int], stages: tuple[str, ...]
) -> dict[str, set[int]]:
    """Validate a drop map against the stage names and ids.

    Raises:
        LocalProtocolError: an unknown stage or id.
    """
    out: dict[str, set[int]] = {s: set() for s in stages}
    for stage, who in (drop or {}).items():
        if stage not in out:
            raise LocalProtocolError(f"unknown stage {stage!r}; stages are {stages}")
        out[stage] = set(who)
        if not out[stage] <= ids:
            raise LocalProtocolError(f"drop[{stage!r}] names unknown ids")
    return out


class Simulation:
    """Drives one server and its clients stage by stage (subclasses build them)."""

    STAGES: tuple[str, ...] = ()
    server: ServerBase[Any]
    clients: dict[int, ClientBase[Any]]

    def _init_accounting(self, ids: Iterable[int], drop: Mapping[str, Iterable[int]] | None,
                         ) -> None:
        ids = list(ids)
        self._drop = check_drop(drop, set(ids), self.STAGES)
        self.client_s = dict.fromkeys(ids, 0.0)
        self.bytes_up = dict.fromkeys(ids, 0)
        self.bytes_down = dict.fromkeys(ids, 0)
        self.server_s = 0.0
        self.client_errors: dict[int, BaseException] = {}

    # -- hooks for tests -------------------------------------------------------------------

    def to_client(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        """Bytes the server sends to ``cid`` for ``stage``; return None to lose them."""
        return data

    def to_server(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        """Bytes ``cid`` sends for ``stage``; return None to lose them."""
        return data

    # -- driving ---------------------------------------------------------------------------

    def gone(self, cid: int, stage: ServerStage) -> bool:
        """True if ``cid`` dropped at ``stage`` or earlier, or aborted."""
        if cid in self.client_errors:
            return True
        names = self.STAGES
        upto = names[: names.index(stage.value) + 1] if stage.value in names else names
        return any(cid in self._drop[s] for s in upto)

    def _start_args(self, cid: int) -> tuple[Any, float | None]:
        """The (input, weight) a client starts with."""
        return None, None

    def _client(self, cid: int, call: Callable[[ClientBase[Any]], list[bytes]]) -> list[bytes]:
        t0 = time.perf_counter()
        try:
            return call(self.clients[cid])
        except ProtocolError as exc:
            self.client_errors[cid] = exc
            return []
        finally:
            self.client_s[cid] += time.perf_counter() - t0

    def _up(self, cid: int, stage: ServerStage, payloads: list[bytes]) -> None:
        for raw in payloads:
            data = self.to_server(cid, stage, raw)
            if data is None:
                continue
            self.bytes_up[cid] += len(data)
            t0 = time.perf_counter()
            try:
                self.server.receive_data(cid, data)
            except ProtocolError:
                pass  # recorded in server.rejected; the sender is barred
            finally:
                self.server_s += time.perf_counter() - t0

    def _start_all(self) -> None:
        stage = self.server.stage
        for cid in self.clients:
            if self.gone(cid, stage):
                continue
            x, w = self._start_args(cid)
            out = self._client(cid, lambda c, x=x, w=w: [  # type: ignore[misc]
                encode(m) for m in c.start(x, weight=w)])
            self._up(cid, stage, out)

    def _close(self) -> dict[int, bytes]:
        t0 = time.perf_counter()
        try:
            missing = self.server.expected - self.server.received
            out = self.server.close_stage(missing)
            cache: dict[int, tuple[Message, bytes]] = {}
            for m in out.values():  # keep m alive in the cache so id() stays unique
                cache.setdefault(id(m), (m, encode(m)))
            return {cid: cache[id(m)][1] for cid, m in out.items()}
        finally:
            self.server_s += time.perf_counter() - t0

    def drive(self) -> None:
        """Start every client and run stages until the server is done, delivering what
        closing each stage (the last one included) sends.

        Raises:
            ThresholdError: fewer than the threshold remain (session aborted).
            ProtocolError: the server aborted for another reason.
        """
        self._start_all()
        while True:
            outgoing = self._close()
            stage = self.server.stage
            for cid, raw in outgoing.items():
                if self.gone(cid, stage):
                    continue
                data = self.to_client(cid, stage, raw)
                if data is None:
                    continue
                self.bytes_down[cid] += len(data)
                self._up(cid, stage,
                         self._client(cid, lambda c, d=data: c.receive_data(d)))  # type: ignore[misc]
            if stage is ServerStage.DONE:
                return

"""In-memory simulation of one round: n clients wired to a server through the wire codec.

``run_round(config, inputs, drop=None, weights=None)`` is the researchers' and benchmarks'
entry point. Every message is encoded to bytes and decoded again on the other side (bytes
counted per client, up and down), and every participant call is timed with
``time.perf_counter`` (codec time included, charged to whoever runs it).

``drop`` maps a stage name (``"advertise"``, ``"share"``, ``"masked_input"``,
``"consistency"``, ``"unmask"``) to the ids that fail to send that stage's message; a client
that drops stays gone for the rest of the round. Dropping at ``advertise``/``share`` keeps a
client out of everyone's shares and masks (an absent neighbour in the fixed graph); at
``masked_input`` its pairwise masks are recovered from key shares; at
``consistency``/``unmask`` its input is still counted, it just stops answering. The plaintext
baseline has one stage (``masked_input``): any drop up to it leaves the client out.

Mask accounting for benchmarks: ``client_mask_words + server_mask_words`` is the number of
uint32 keystream words the round expanded, i.e. what a raw AES-CTR bound must generate.

:class:`RoundSimulation` exposes two hooks, :meth:`~RoundSimulation.to_client` and
:meth:`~RoundSimulation.to_server`, that tests override to tamper with bytes in flight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from protocols.client import SecAggClient
from protocols.config import SecAggConfig
from protocols.context import RoundContext
from protocols.encoding import Aggregate, check_input
from protocols.errors import InputError, LocalProtocolError, ProtocolError
from protocols.participant import ClientBase, ServerBase
from protocols.plaintext import PlainClient, PlainServer
from protocols.server import SecAggServer
from protocols.transitions import ServerStage
from protocols.wire import encode
from secagg.sign import SigningKey

__all__ = ["STAGES", "RoundResult", "RoundSimulation", "create_client", "create_server",
           "run_round"]

STAGES = ("advertise", "share", "masked_input", "consistency", "unmask")


def create_server(ctx: RoundContext) -> ServerBase:
    """The server participant for ``ctx.config.protocol``."""
    return SecAggServer(ctx) if ctx.config.is_secure else PlainServer(ctx)


def create_client(
    ctx: RoundContext, client_id: int, *, identity: SigningKey | None = None
) -> ClientBase:
    """The client participant for ``ctx.config.protocol``.

    Raises:
        LocalProtocolError: as the participant constructors.
    """
    if ctx.config.is_secure:
        return SecAggClient(ctx, client_id, identity=identity)
    return PlainClient(ctx, client_id)


@dataclass(frozen=True)
class RoundResult:
    """Outcome, timings and traffic of one simulated round.

    ``aggregate`` is the float sum over ``included`` (weighted mode: ``sum w x``, and
    ``weight_total = sum w``); timings are seconds of compute per role; bytes are wire bytes.
    """

    config: SecAggConfig
    output: Aggregate = field(repr=False)
    server_s: float
    client_s: dict[int, float] = field(repr=False)
    bytes_up: dict[int, int] = field(repr=False)
    bytes_down: dict[int, int] = field(repr=False)
    client_mask_words: int
    server_mask_words: int
    client_errors: dict[int, BaseException] = field(default_factory=dict)
    server_rejections: tuple[ProtocolError, ...] = ()

    @property
    def aggregate(self) -> npt.NDArray[np.float64]:
        """The decoded sum of the included inputs."""
        return self.output.values

    @property
    def included(self) -> tuple[int, ...]:
        """Ids whose masked input was counted."""
        return self.output.included

    @property
    def weight_total(self) -> float:
        """Total weight of the included clients (their number when unweighted)."""
        return self.output.weight_total

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        """The (weighted) mean update."""
        return self.output.mean

    @property
    def client_s_mean(self) -> float:
        """Mean compute seconds per participating client."""
        return float(np.mean(list(self.client_s.values()))) if self.client_s else 0.0

    @property
    def client_s_max(self) -> float:
        """Slowest client's compute seconds."""
        return max(self.client_s.values(), default=0.0)

    @property
    def total_compute_s(self) -> float:
        """Server plus all clients."""
        return self.server_s + sum(self.client_s.values())

    @property
    def bytes_up_per_client(self) -> float:
        """Mean bytes sent per participating client."""
        return float(np.mean(list(self.bytes_up.values()))) if self.bytes_up else 0.0

    @property
    def bytes_down_per_client(self) -> float:
        """Mean bytes received per participating client."""
        return float(np.mean(list(self.bytes_down.values()))) if self.bytes_down else 0.0


def _check_drop(drop: Mapping[str, Iterable[int]] | None, ids: set[int]) -> dict[str, set[int]]:
    out = {s: set() for s in STAGES}  # type: dict[str, set[int]]
    for stage, who in (drop or {}).items():
        if stage not in out:
            raise LocalProtocolError(f"unknown stage {stage!r}; stages are {STAGES}")
        out[stage] = set(who)
        if not out[stage] <= ids:
            raise LocalProtocolError(f"drop[{stage!r}] names unknown ids")
    return out


class RoundSimulation:
    """One round of n in-process clients and a server, driven stage by stage."""

    def __init__(
        self,
        config: SecAggConfig,
        inputs: Mapping[int, npt.NDArray[Any]],
        *,
        drop: Mapping[str, Iterable[int]] | None = None,
        weights: Mapping[int, float] | None = None,
        round_id: int = 1,
    ) -> None:
        """Build the context and participants; validate inputs before any crypto.

        Raises:
            TypeError: an input is not a float numpy array.
            InputError: inputs of unequal length, NaN/inf, beyond the clip range, a bad
                weight (``party`` names the client).
            ConfigError: ``len(inputs) != config.n`` and similar.
            LocalProtocolError: ``drop`` names an unknown stage or id.
        """
        ids = sorted(inputs)
        if not ids:
            raise InputError("no inputs")
        dim = int(np.shape(inputs[ids[0]])[0]) if np.ndim(inputs[ids[0]]) == 1 else 0
        identities = {i: SigningKey.generate() for i in ids} if config.active else {}
        self.ctx = RoundContext(
            config=config, round_id=round_id, dim=max(dim, 1), client_ids=ids,
            verify_keys={i: k.verify_key for i, k in identities.items()} or None)
        self._drop = _check_drop(drop, set(ids))
        self._inputs = dict(inputs)
        self._weights = dict(weights) if weights is not None else {}
        for i in ids:
            try:
                check_input(self.ctx, inputs[i], self._weights.get(i))
            except InputError as exc:
                raise InputError(str(exc), party=i) from exc
        self.server = create_server(self.ctx)
        self.clients = {i: create_client(self.ctx, i, identity=identities.get(i)) for i in ids}
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
        upto = STAGES[: STAGES.index(stage.value) + 1]
        return any(cid in self._drop[s] for s in upto)

    def _client(self, cid: int, call: Callable[[ClientBase], list[bytes]]) -> list[bytes]:
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
            x, w = self._inputs[cid], self._weights.get(cid)
            out = self._client(cid, lambda c, x=x, w=w: [  # type: ignore[misc]
                encode(m) for m in c.start(x, weight=w)])
            self._up(cid, stage, out)

    def _close(self) -> dict[int, bytes]:
        t0 = time.perf_counter()
        try:
            missing = self.server.expected - self.server.received
            out = self.server.close_stage(missing)
            return {cid: encode(m) for cid, m in out.items()}
        finally:
            self.server_s += time.perf_counter() - t0

    def run(self) -> RoundResult:
        """Drive the round to the end.

        Raises:
            ThresholdError: fewer than the threshold remain (round aborted).
            ProtocolError: the server aborted for another reason.
        """
        self._start_all()
        while True:
            outgoing = self._close()
            stage = self.server.stage
            if stage is ServerStage.DONE:
                break
            for cid, raw in outgoing.items():
                if self.gone(cid, stage):
                    continue
                data = self.to_client(cid, stage, raw)
                if data is None:
                    continue
                self.bytes_down[cid] += len(data)
                self._up(cid, stage,
                         self._client(cid, lambda c, d=data: c.receive_data(d)))  # type: ignore[misc]
        return self._result()

    def _result(self) -> RoundResult:
        active = [c for c in self.clients if self.bytes_up[c] or self.bytes_down[c]]
        return RoundResult(
            config=self.ctx.config, output=self.server.result, server_s=self.server_s,
            client_s={c: self.client_s[c] for c in active},
            bytes_up={c: self.bytes_up[c] for c in active},
            bytes_down={c: self.bytes_down[c] for c in active},
            client_mask_words=sum(c.mask_words for c in self.clients.values()),
            server_mask_words=self.server.mask_words, client_errors=dict(self.client_errors),
            server_rejections=tuple(self.server.rejected))


def run_round(
    config: SecAggConfig,
    inputs: Mapping[int, npt.NDArray[Any]],
    drop: Mapping[str, Iterable[int]] | None = None,
    weights: Mapping[int, float] | None = None,
    *,
    round_id: int = 1,
) -> RoundResult:
    """Run one round in process and return its aggregate, timings and traffic.

    Raises:
        ThresholdError: fewer than the threshold remain at some stage.
        InputError, ConfigError, LocalProtocolError, TypeError: bad arguments (before any
            crypto runs).
        ProtocolError: the round aborted for another protocol reason.
    """
    return RoundSimulation(config, inputs, drop=drop, weights=weights, round_id=round_id).run()

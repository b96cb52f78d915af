"""A streaming in-process round for large cohorts (SecAgg, SecAgg+, plaintext).

:func:`stream_round` runs the same participants, wire codec, drop semantics and accounting
as :func:`secagg.protocols.harness.run_round` and returns the same
:class:`~secagg.protocols.harness.RoundResult`, but holds O(one message) of traffic at a time,
so that 10^5 clients fit in one process:

- each server message is encoded just before it is delivered and dropped from the server's
  outgoing map as soon as it is (a broadcast object is encoded once); every reply goes to
  the server at once, so no stage's messages are ever all alive;
- a client participant exists only while it still has something to do: it is created when
  it starts (clients that drop at ``advertise`` never are), and released when it drops, is not
  addressed by a stage, aborts or finishes (its mask-word count is kept);
- inputs (and weights) may be callables ``f(client_id)``, so that the caller regenerates an
  input from a per-client seed instead of holding all of them. An input is checked when its
  client starts (``run_round`` checks all before any crypto; here they are never all held).

What stays per client is the participant's own state between stages, the server's state,
and three numbers of accounting. Timings are split by stage: :attr:`StreamResult.server_stage_s`
keys ``"<stage>.receive"`` (accepting that stage's messages, codec included) and
``"<stage>.close"`` (closing it: for ``"unmask.close"``, reconstruction, mask removal and
decoding); :attr:`StreamResult.client_stage_s` sums every client's compute per server stage
(``"advertise"`` is ``start``). Subclasses of :class:`StreamingRound` may wrap every server
call (:meth:`~StreamingRound.server_call`) or client call (:meth:`~StreamingRound.client_call`),
e.g. to attribute time by kind of work. CKKS rounds are refused (their result lives in the
clients; use ``run_round``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from secagg.protocols.config import SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.errors import InputError, LocalProtocolError, ProtocolError
from secagg.protocols.harness import STAGES, RoundResult, create_client, create_server
from secagg.protocols.participant import ClientBase
from secagg.protocols.simulation import Simulation
from secagg.protocols.transitions import ClientStage, ServerStage
from secagg.protocols.wire import encode
from secagg.sign import SigningKey

__all__ = ["StreamResult", "StreamingRound", "stream_round"]

T = TypeVar("T")
InputSource = Mapping[int, npt.NDArray[Any]] | Callable[[int], npt.NDArray[Any]]
WeightSource = Mapping[int, float] | Callable[[int], float | None]


@dataclass(frozen=True)
class StreamResult(RoundResult):
    """A :class:`RoundResult` with the time split by stage (see the module docstring)."""

    server_stage_s: dict[str, float] = field(default_factory=dict)
    client_stage_s: dict[str, float] = field(default_factory=dict)


def _source(src: Any, name: str) -> Callable[[int], Any]:
    if src is None:
        return lambda _cid: None
    if isinstance(src, Mapping):
        return src.get if name == "weights" else src.__getitem__
    if callable(src):
        return src  # type: ignore[no-any-return]
    raise TypeError(f"{name} must be a mapping or a callable, got {type(src).__name__}")


class StreamingRound(Simulation):
    """One SecAgg / SecAgg+ / plaintext round driven message by message (module docstring)."""

    STAGES = STAGES

    def __init__(
        self,
        config: SecAggConfig,
        inputs: InputSource,
        *,
        dim: int | None = None,
        client_ids: Iterable[int] | None = None,
        drop: Mapping[str, Iterable[int]] | None = None,
        weights: WeightSource | None = None,
        round_id: int = 1,
    ) -> None:
        """Build the context and the server; clients are created as they start.

        ``client_ids``: default the keys of ``inputs`` (a mapping) or ``range(config.n)``.
        ``dim``: required when ``inputs`` is a callable.

        Raises:
            TypeError: ``inputs`` or ``weights`` is neither a mapping nor a callable.
            InputError: no clients, or ``dim`` missing for callable inputs.
            ConfigError: ``len(client_ids) != config.n`` and similar (from the context).
            LocalProtocolError: a CKKS config; ``drop`` names an unknown stage or id.
        """
        if not isinstance(config, SecAggConfig):
            raise TypeError(f"config must be SecAggConfig, got {type(config).__name__}")
        if config.is_ckks:
            raise LocalProtocolError("stream_round runs SecAgg, SecAgg+ and plain; use "
                                     "run_round for CKKS")
        if isinstance(inputs, Mapping):
            ids = sorted(inputs if client_ids is None else client_ids)
            if dim is None and ids:
                dim = int(np.shape(inputs[ids[0]])[0]) if np.ndim(inputs[ids[0]]) == 1 else 1
        else:
            ids = sorted(range(config.n) if client_ids is None else client_ids)
        if not ids:
            raise InputError("no clients")
        if dim is None:
            raise InputError("dim is required when inputs is a callable")
        self._input = _source(inputs, "inputs")
        self._weight = _source(weights, "weights")
        self._init_accounting(ids, drop)
        self._identities: dict[int, SigningKey] = (
            {i: SigningKey.generate() for i in ids} if config.active else {})
        self.ctx = RoundContext(
            config=config, round_id=round_id, dim=max(dim, 1), client_ids=ids,
            verify_keys={i: k.verify_key for i, k in self._identities.items()} or None)
        self.server = create_server(self.ctx)
        self.clients: dict[int, ClientBase[Any]] = {}
        self.client_mask_words = 0
        self.server_stage_s: dict[str, float] = {}
        self.client_stage_s: dict[str, float] = {}

    # -- hooks -----------------------------------------------------------------------------

    def server_call(self, label: str, call: Callable[[], T]) -> T:
        """Run one server call; ``label`` is ``"<stage>.receive"`` or ``"<stage>.close"``.
        Override to wrap it (call ``super()``)."""
        return call()

    def client_call(self, cid: int, stage: ServerStage, call: Callable[[], T]) -> T:
        """Run one call into client ``cid`` answering ``stage``. Override to wrap it."""
        return call()

    def after_stage(self, stage: ServerStage) -> None:
        """Called once every message the server collects in ``stage`` has been sent (before
        it closes; not for ``DONE``). Override to sample memory, say."""

    # -- driving ---------------------------------------------------------------------------

    def _server(self, label: str, call: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        try:
            return self.server_call(label, call)
        finally:
            dt = time.perf_counter() - t0
            self.server_s += dt
            self.server_stage_s[label] = self.server_stage_s.get(label, 0.0) + dt

    def _run_client(self, cid: int, stage: ServerStage,
                    call: Callable[[ClientBase[Any]], list[bytes]]) -> list[bytes]:
        client = self.clients[cid]
        t0 = time.perf_counter()
        try:
            return self.client_call(cid, stage, lambda: call(client))
        except InputError:
            raise  # the caller's input, not a peer's fault: the round stops (as run_round)
        except ProtocolError as exc:
            self.client_errors[cid] = exc
            return []
        finally:
            dt = time.perf_counter() - t0
            self.client_s[cid] += dt
            self.client_stage_s[stage.value] = self.client_stage_s.get(stage.value, 0.0) + dt
            if client.stage in (ClientStage.DONE, ClientStage.ABORTED):
                self._release(cid)

    def _release(self, cid: int) -> None:
        client = self.clients.pop(cid, None)
        if client is not None:
            self.client_mask_words += client.mask_words

    def _up(self, cid: int, stage: ServerStage, payloads: list[bytes]) -> None:
        label = f"{stage.value}.receive"
        for raw in payloads:
            data = self.to_server(cid, stage, raw)
            if data is None:
                continue
            self.bytes_up[cid] += len(data)
            try:
                self._server(label, lambda d=data: self.server.receive_data(cid, d))  # type: ignore[misc]
            except ProtocolError:
                pass  # recorded in server.rejected; the sender is barred

    def _start_all(self) -> None:
        stage = self.server.stage
        for cid in self.client_ids:
            if self.gone(cid, stage):
                continue
            x, w = self._input(cid), self._weight(cid)
            self.clients[cid] = create_client(self.ctx, cid, identity=self._identities.get(cid))
            try:
                out = self._run_client(cid, stage, lambda c, x=x, w=w: [  # type: ignore[misc]
                    encode(m) for m in c.start(x, weight=w)])
            except InputError as exc:
                raise InputError(str(exc), party=cid) from exc
            self._up(cid, stage, out)
        self.after_stage(stage)

    @property
    def client_ids(self) -> tuple[int, ...]:
        """The round's client ids, ascending."""
        return self.ctx.client_ids

    def drive(self) -> None:
        """Start every client, then close stages and deliver until the server is done.

        Raises:
            ThresholdError: fewer than the threshold remain (round aborted).
            ProtocolError: the server aborted for another reason.
        """
        self._start_all()
        while True:
            closing = self.server.stage
            missing = self.server.expected - self.server.received
            out = self._server(f"{closing.value}.close",
                               lambda m=missing: self.server.close_stage(m))  # type: ignore[misc]
            stage = self.server.stage
            for cid in [c for c in self.clients if c not in out]:
                self._release(cid)  # not addressed: nothing more will reach it
            last: tuple[object, bytes] | None = None
            for cid in list(out):
                msg = out.pop(cid)
                if self.gone(cid, stage) or cid not in self.clients:
                    self._release(cid)
                    continue
                if last is None or last[0] is not msg:  # a broadcast is encoded once
                    last = (msg, self._server(f"{closing.value}.close",
                                              lambda m=msg: encode(m)))  # type: ignore[misc]
                data = self.to_client(cid, stage, last[1])
                if data is None:
                    continue
                self.bytes_down[cid] += len(data)
                self._up(cid, stage, self._run_client(
                    cid, stage, lambda c, d=data: c.receive_data(d)))  # type: ignore[misc]
            del last
            if stage is ServerStage.DONE:
                for cid in list(self.clients):
                    self._release(cid)
                return
            self.after_stage(stage)

    def run(self) -> StreamResult:
        """Drive the round to the end and return its result.

        Raises:
            As :meth:`drive`.
        """
        self.drive()
        active = [c for c in self.client_ids if self.bytes_up[c] or self.bytes_down[c]]
        return StreamResult(
            config=self.ctx.config, output=self.server.result, server_s=self.server_s,
            client_s={c: self.client_s[c] for c in active},
            bytes_up={c: self.bytes_up[c] for c in active},
            bytes_down={c: self.bytes_down[c] for c in active},
            client_mask_words=self.client_mask_words,
            server_mask_words=self.server.mask_words, client_errors=dict(self.client_errors),
            server_rejections=tuple(self.server.rejected),
            released_noise=getattr(self.server, "released_noise", {}),
            server_stage_s=dict(self.server_stage_s), client_stage_s=dict(self.client_stage_s))


def stream_round(
    config: SecAggConfig,
    inputs: InputSource,
    drop: Mapping[str, Iterable[int]] | None = None,
    weights: WeightSource | None = None,
    *,
    dim: int | None = None,
    client_ids: Iterable[int] | None = None,
    round_id: int = 1,
) -> StreamResult:
    """Run one round in process, streaming (module docstring); same result as ``run_round``.

    Raises:
        ThresholdError: fewer than the threshold remain at some stage.
        InputError, ConfigError, LocalProtocolError, TypeError: bad arguments (an input is
            checked when its client starts; ``party`` names it).
        ProtocolError: the round aborted for another protocol reason.
    """
    return StreamingRound(config, inputs, dim=dim, client_ids=client_ids, drop=drop,
                          weights=weights, round_id=round_id).run()

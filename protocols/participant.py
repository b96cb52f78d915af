"""The sans-IO skeleton shared by every client and server: stages, tables, fail-closed errors.

Clients: ``start(x) -> [msg]``, ``receive(msg) -> [msg]`` (or ``receive_data`` on bytes). Any
error moves a client to ``ABORTED``, wipes its secrets and is re-raised; every later call
raises :class:`LocalProtocolError`.

Servers: ``receive(sender, msg)`` and ``close_stage(missing) -> {id: msg}``. A server talks
to many peers, so one peer's illegal message must not end the round for the others: it is
rejected with :class:`RemoteProtocolError` naming the sender, and that sender is barred for
the rest of the round (the driver then reports it missing). Misuse by the server's own driver,
and a round that falls below the threshold, abort the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, NoReturn, TypeVar

from secagg.protocols import wire
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import Aggregate
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import LocalProtocolError, RemoteProtocolError
from secagg.protocols.messages import (
    AdvertiseKeys,
    CkksInput,
    Commitments,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedSum,
    KeyAdvert,
    KeyConfirm,
    KeyDelivery,
    KeyDistribution,
    KeyRoster,
    MaskedInput,
    Message,
    Reveal,
    Roster,
    ShareKeys,
    SharesRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocols.transitions import START, ClientStage, ClientTable, ServerStage, ServerTable

__all__ = ["MESSAGE_TYPES", "ClientBase", "CtxT", "ServerBase"]

MESSAGE_TYPES = (
    AdvertiseKeys, Commitments, Reveal, Roster, ShareKeys, SharesRelay, MaskedInput,
    ConsistencyRequest, ConsistencySignature, UnmaskRequest, UnmaskResponse, KeyAdvert, KeyRoster,
    KeyDistribution, KeyDelivery, KeyConfirm, CkksInput, EncryptedSum,
)

CtxT = TypeVar("CtxT", RoundContext, EpochContext)
"""What a session is bound to: a round, or a CKKS key epoch (its ``round_id`` is the epoch)."""


class ClientBase(Generic[CtxT]):
    """Stage bookkeeping for a client; subclasses implement the steps and the wipe."""

    def __init__(self, ctx: CtxT, client_id: int, table: ClientTable) -> None:
        """Bind the client to its round (or key epoch).

        Raises:
            TypeError: ``ctx`` is not a RoundContext or EpochContext.
            LocalProtocolError: ``client_id`` is not one of the round's clients.
        """
        if not isinstance(ctx, (RoundContext, EpochContext)):
            raise TypeError(f"ctx must be RoundContext, got {type(ctx).__name__}")
        if isinstance(client_id, bool) or not isinstance(client_id, int):
            raise TypeError(f"client_id must be int, got {type(client_id).__name__}")
        if not ctx.is_client(client_id):
            raise LocalProtocolError(f"{client_id} is not a client of this round")
        self._ctx: CtxT = ctx
        self._id = client_id
        self._table = table
        self._stage = ClientStage.NEW
        self.error: BaseException | None = None
        """The error that aborted this client, if any."""
        self.mask_words = 0
        """Keystream words this client expanded for masks (for the benchmark's bound)."""

    @property
    def client_id(self) -> int:
        """This client's id."""
        return self._id

    @property
    def stage(self) -> ClientStage:
        """The current stage."""
        return self._stage

    def start(self, x: Any, *, weight: float | None = None) -> list[Message]:
        """Begin the round with input ``x`` (and ``weight`` in weighted mode).

        Raises:
            LocalProtocolError: started twice, or aborted before.
            InputError, TypeError: ``x`` or ``weight`` unusable (see
                :func:`secagg.protocols.encoding.check_input`).
        """
        return self._run(START, lambda: self._on_start(x, weight))

    def receive(self, msg: Message) -> list[Message]:
        """Handle one message from the server; return the messages to send back.

        Raises:
            LocalProtocolError: ``msg`` is not a protocol message, or the client aborted.
            RemoteProtocolError: the message is not legal now (type, stage, round, content).
            ThresholdError: the server reports fewer than ``t`` parties.
        """
        if not isinstance(msg, MESSAGE_TYPES):
            self._abort(LocalProtocolError(f"not a protocol message: {type(msg).__name__}"))
        return self._run(msg.TYPE, lambda: self._dispatch(msg))

    def receive_data(self, data: bytes) -> list[bytes]:
        """:meth:`receive` on wire bytes; the replies come back encoded.

        Raises:
            As :meth:`receive`; undecodable bytes raise RemoteProtocolError.
        """
        self._check_alive()
        try:
            msg = wire.decode(data)
        except RemoteProtocolError as exc:
            self._abort(exc)
        return [wire.encode(m) for m in self.receive(msg)]

    def _check_alive(self) -> None:
        if self._stage is ClientStage.ABORTED:
            raise LocalProtocolError("client aborted earlier; it accepts nothing more",
                                     party=self._id)

    def _run(self, event: Any, step: Callable[[], list[Message]]) -> list[Message]:
        self._check_alive()
        nxt = self._table.next(self._stage, event)
        if nxt is None:
            err_type = LocalProtocolError if event == START else RemoteProtocolError
            self._abort(err_type(f"{getattr(event, 'name', event)} is not allowed in stage "
                                 f"{self._stage.value}"))
        try:
            out = step()
        except BaseException as exc:
            self._abort(exc)
        self._stage = nxt
        if nxt is ClientStage.DONE:
            self._wipe()
        return out

    def _abort(self, exc: BaseException) -> NoReturn:
        """Fail closed: wipe, move to ABORTED, raise ``exc``."""
        self._stage = ClientStage.ABORTED
        self.error = exc
        self._wipe()
        raise exc

    def _check_round(self, msg: Message) -> None:
        if msg.round_id != self._ctx.round_id:
            raise RemoteProtocolError(
                f"message for round {msg.round_id}, this is round {self._ctx.round_id}")

    def _on_start(self, x: Any, weight: float | None) -> list[Message]:
        raise NotImplementedError

    def _dispatch(self, msg: Message) -> list[Message]:
        raise NotImplementedError

    def _wipe(self) -> None:
        raise NotImplementedError


class ServerBase(Generic[CtxT]):
    """Stage bookkeeping for a server; subclasses validate messages and close stages."""

    def __init__(self, ctx: CtxT, table: ServerTable) -> None:
        """Bind the server to its round (or key epoch).

        Raises:
            TypeError: ``ctx`` is not a RoundContext or EpochContext.
        """
        if not isinstance(ctx, (RoundContext, EpochContext)):
            raise TypeError(f"ctx must be RoundContext, got {type(ctx).__name__}")
        self._ctx: CtxT = ctx
        self._table = table
        self._stage = table.first
        self._expected: frozenset[int] = frozenset(ctx.client_ids)
        self._received: set[int] = set()
        self._barred: set[int] = set()
        self._result: Aggregate | None = None
        self.rejected: list[RemoteProtocolError] = []
        """Every peer message this server rejected, in order (diagnostics)."""
        self.mask_words = 0
        """Keystream words this server expanded to remove masks."""
        self.trace: Callable[[str | None], None] | None = None
        """Optional observer, told the name of each step as it starts and None when a call
        returns: the protocol has no clock, a caller that wants timings brings one."""

    @property
    def stage(self) -> ServerStage:
        """The stage being collected."""
        return self._stage

    @property
    def expected(self) -> frozenset[int]:
        """Who was asked to send in this stage (``close_stage`` wants the silent ones)."""
        return self._expected

    @property
    def barred(self) -> frozenset[int]:
        """Peers whose illegal messages got them excluded for the rest of the round."""
        return frozenset(self._barred)

    @property
    def received(self) -> frozenset[int]:
        """Who has sent an accepted message in this stage."""
        return frozenset(self._received)

    @property
    def result(self) -> Aggregate:
        """The decoded aggregate.

        Raises:
            LocalProtocolError: the round is not done.
        """
        if self._result is None:
            raise LocalProtocolError(f"no result in stage {self._stage.value}")
        return self._result

    def receive_data(self, sender: int, data: bytes) -> None:
        """:meth:`receive` on wire bytes.

        Raises:
            As :meth:`receive`; undecodable bytes raise RemoteProtocolError.
        """
        self._check_sender(sender)
        if self.trace is not None:
            self.trace("decode")
        try:
            msg = wire.decode(data)
        except RemoteProtocolError as exc:
            self._end_trace()
            self._reject(sender, exc, bar=True)
        self.receive(sender, msg)

    def receive(self, sender: int, msg: Message) -> None:
        """Accept one message of the current stage from ``sender``.

        Raises:
            LocalProtocolError: the server is aborted or done, ``msg`` is no message, or
                ``sender`` is not an int.
            RemoteProtocolError: unknown or barred sender, a second message from it, or a
                message illegal in this stage, of another round, claiming another sender, or
                with invalid content (the sender is then barred).
        """
        if not isinstance(msg, MESSAGE_TYPES):
            raise LocalProtocolError(f"not a protocol message: {type(msg).__name__}")
        if self.trace is None:
            self._receive(sender, msg)
            return
        self.trace("accept")
        try:
            self._receive(sender, msg)
        finally:
            self._end_trace()

    def _end_trace(self) -> None:
        if self.trace is not None:
            self.trace(None)

    def _receive(self, sender: int, msg: Message) -> None:
        self._check_sender(sender)
        if sender in self._barred or sender not in self._expected:
            self._reject(sender, RemoteProtocolError("sender is not expected in stage "
                                                     f"{self._stage.value}"), bar=False)
        if sender in self._received:
            self._reject(sender, RemoteProtocolError("second message in one stage"), bar=False)
        try:
            if not self._table.accepts(self._stage, msg.TYPE):
                raise RemoteProtocolError(f"{msg.TYPE.name} not allowed in {self._stage.value}")
            if msg.round_id != self._ctx.round_id or getattr(msg, "sender", sender) != sender:
                raise RemoteProtocolError("message of another round or sender")
            self._accept(sender, msg)
        except RemoteProtocolError as exc:
            self._reject(sender, exc, bar=True)
        self._received.add(sender)

    def _check_sender(self, sender: int) -> None:
        if self._stage in (ServerStage.ABORTED, ServerStage.DONE):
            raise LocalProtocolError(f"server is {self._stage.value}")
        if isinstance(sender, bool) or not isinstance(sender, int):
            raise LocalProtocolError(f"sender must be an int id, got {type(sender).__name__}")
        if not self._ctx.is_client(sender):
            self._reject(sender, RemoteProtocolError("unknown sender"), bar=False)

    def _reject(self, sender: int | None, exc: RemoteProtocolError, *, bar: bool) -> NoReturn:
        if exc.party is None and sender is not None:
            exc = RemoteProtocolError(str(exc), party=sender)
        if bar and sender is not None:
            self._barred.add(sender)
        self.rejected.append(exc)
        raise exc

    def close_stage(self, missing: Iterable[int]) -> dict[int, Message]:
        """End the current stage; ``missing`` are the expected senders that did not send.

        Returns what to send to whom next (empty once the round is done).

        Raises:
            LocalProtocolError: the server is aborted or done, or ``missing`` is not exactly
                the expected senders (barred ones included) whose message was not accepted.
            ThresholdError: fewer than the threshold remain for some secret.
            RemoteProtocolError: the unmask answers are inconsistent (round aborted).
        """
        if self._stage in (ServerStage.ABORTED, ServerStage.DONE):
            raise LocalProtocolError(f"server is {self._stage.value}")
        if self.trace is None:
            return self._close_stage(missing)
        self.trace("close")
        try:
            return self._close_stage(missing)
        finally:
            self._end_trace()

    def _close_stage(self, missing: Iterable[int]) -> dict[int, Message]:
        gone = set(missing)
        if gone != set(self._expected) - self._received:
            self._fail(LocalProtocolError(
                f"missing must be exactly the silent expected senders, got {sorted(gone)[:8]}"))
        try:
            out = self._close(self._stage, frozenset(self._received))
        except BaseException as exc:
            self._fail(exc)
        self._stage = self._table.close[self._stage]
        self._expected = self._next_expected(out)
        self._received = set()
        return out

    def _next_expected(self, out: dict[int, Message]) -> frozenset[int]:
        """Who must answer in the next stage: by default everyone just sent a message."""
        return frozenset(out)

    def _fail(self, exc: BaseException) -> NoReturn:
        self._stage = ServerStage.ABORTED
        self._wipe()
        raise exc

    def _accept(self, sender: int, msg: Message) -> None:
        raise NotImplementedError

    def _close(self, stage: ServerStage, received: frozenset[int]) -> dict[int, Message]:
        raise NotImplementedError

    def _wipe(self) -> None:
        """Drop round state (the server holds reconstructed secrets at the end)."""

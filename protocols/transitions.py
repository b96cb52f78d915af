"""The legal moves of each role, as data: ``(stage, input) -> next stage``.

Clients: the input is a message type from the server, or the local ``START`` event. Servers:
``accept`` lists the message types a stage collects (the stage does not change on receipt),
and ``close`` the stage that follows when the driver closes one. Anything not in a table is
illegal: the participant raises and (client) aborts, wiping its secrets. Tests enumerate
every pair; docs can draw the diagrams from here.

Tables: the plaintext baseline; SecAgg(+) passive and active; ``ckks`` (upload at START,
``masked_input`` collects :class:`secagg.protocols.messages.CkksInput`, closing it returns the
:class:`secagg.protocols.messages.EncryptedSum`); ``ckks+mask`` (the SecAgg+ stages, encrypted
uploads, and the sum after ``unmask``); the CKKS key setup (``advertise`` -> ``distribute``
-> ``confirm``). :func:`client_table_for` / :func:`server_table_for` pick by config.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from secagg.protocols.config import ProtocolKind, SecAggConfig
from secagg.protocols.messages import MsgType

__all__ = [
    "INPUT_PENDING",
    "START",
    "ClientStage",
    "ClientTable",
    "ServerStage",
    "ServerTable",
    "client_table",
    "client_table_for",
    "key_setup_client_table",
    "key_setup_server_table",
    "server_table",
    "server_table_for",
]


class ClientStage(Enum):
    """Where a client is: the name says what it waits for."""

    NEW = "new"
    AWAIT_COMMITMENTS = "await_commitments"
    AWAIT_ROSTER = "await_roster"
    AWAIT_SHARES = "await_shares"
    AWAIT_CONSISTENCY = "await_consistency"
    AWAIT_UNMASK = "await_unmask"
    AWAIT_KEY = "await_key"
    AWAIT_SUM = "await_sum"
    DONE = "done"
    ABORTED = "aborted"


class ServerStage(Enum):
    """The stage a server is collecting; values are the harness's stage names."""

    ADVERTISE = "advertise"
    REVEAL = "reveal"
    SHARE = "share"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DISTRIBUTE = "distribute"
    CONFIRM = "confirm"
    DONE = "done"
    ABORTED = "aborted"


INPUT_PENDING: frozenset[ClientStage] = frozenset({
    ClientStage.NEW, ClientStage.AWAIT_COMMITMENTS, ClientStage.AWAIT_ROSTER,
    ClientStage.AWAIT_SHARES})
"""Client stages in which the client has not sent its input (its masked, encrypted or plain
contribution) in any protocol: every table sends it on leaving one of these stages (plain and
``ckks`` at ``START``; SecAgg(+) and ``ckks+mask`` on the shares relay). A round that ends
while its client is still in one released nothing of that client's data (the messages before
the input, keys, commitments and shares of fresh secrets, do not depend on it)."""

START = "start"
"""The client's local event that begins a round (``client.start(x)``)."""

ClientInput = MsgType | str


@dataclass(frozen=True)
class ClientTable:
    """``moves[(stage, input)] = next stage`` for one client flavour."""

    moves: dict[tuple[ClientStage, ClientInput], ClientStage]

    def next(self, stage: ClientStage, event: ClientInput) -> ClientStage | None:
        """The next stage, or None if the move is illegal."""
        return self.moves.get((stage, event))


@dataclass(frozen=True)
class ServerTable:
    """What each server stage accepts and what closing it leads to."""

    accept: dict[ServerStage, MsgType]
    close: dict[ServerStage, ServerStage]

    def accepts(self, stage: ServerStage, msg_type: MsgType) -> bool:
        """True if ``stage`` collects messages of ``msg_type``."""
        return self.accept.get(stage) is msg_type

    @property
    def first(self) -> ServerStage:
        """The stage a fresh server collects."""
        return next(iter(self.accept))


_C = ClientStage
_S = ServerStage

_PASSIVE: dict[tuple[ClientStage, ClientInput], ClientStage] = {
    (_C.NEW, START): _C.AWAIT_COMMITMENTS,
    (_C.AWAIT_COMMITMENTS, MsgType.COMMITMENTS): _C.AWAIT_ROSTER,
    (_C.AWAIT_ROSTER, MsgType.ROSTER): _C.AWAIT_SHARES,
    (_C.AWAIT_SHARES, MsgType.SHARES_RELAY): _C.AWAIT_UNMASK,
    (_C.AWAIT_UNMASK, MsgType.UNMASK_REQUEST): _C.DONE,
}
_ACTIVE: dict[tuple[ClientStage, ClientInput], ClientStage] = {
    **_PASSIVE,
    (_C.AWAIT_SHARES, MsgType.SHARES_RELAY): _C.AWAIT_CONSISTENCY,
    (_C.AWAIT_CONSISTENCY, MsgType.CONSISTENCY_REQUEST): _C.AWAIT_UNMASK,
}
_PLAIN: dict[tuple[ClientStage, ClientInput], ClientStage] = {(_C.NEW, START): _C.DONE}

_SERVER_ACCEPT = {
    _S.ADVERTISE: MsgType.ADVERTISE_KEYS,
    _S.REVEAL: MsgType.REVEAL,
    _S.SHARE: MsgType.SHARE_KEYS,
    _S.MASKED_INPUT: MsgType.MASKED_INPUT,
    _S.CONSISTENCY: MsgType.CONSISTENCY_SIGNATURE,
    _S.UNMASK: MsgType.UNMASK_RESPONSE,
}
_SERVER_CLOSE_ACTIVE: dict[ServerStage, ServerStage] = {
    _S.ADVERTISE: _S.REVEAL,
    _S.REVEAL: _S.SHARE,
    _S.SHARE: _S.MASKED_INPUT,
    _S.MASKED_INPUT: _S.CONSISTENCY,
    _S.CONSISTENCY: _S.UNMASK,
    _S.UNMASK: _S.DONE,
}
_SERVER_CLOSE_PASSIVE: dict[ServerStage, ServerStage] = {
    _S.ADVERTISE: _S.REVEAL,
    _S.REVEAL: _S.SHARE,
    _S.SHARE: _S.MASKED_INPUT,
    _S.MASKED_INPUT: _S.UNMASK,
    _S.UNMASK: _S.DONE,
}


def client_table(*, secure: bool, active: bool) -> ClientTable:
    """The client table for the plaintext baseline, passive or active SecAgg(+)."""
    if not secure:
        return ClientTable(dict(_PLAIN))
    return ClientTable(dict(_ACTIVE if active else _PASSIVE))


def server_table(*, secure: bool, active: bool) -> ServerTable:
    """The server table for the plaintext baseline, passive or active SecAgg(+)."""
    if not secure:
        return ServerTable({_S.MASKED_INPUT: MsgType.MASKED_INPUT}, {_S.MASKED_INPUT: _S.DONE})
    accept = dict(_SERVER_ACCEPT)
    if not active:
        del accept[_S.CONSISTENCY]
    return ServerTable(accept, dict(_SERVER_CLOSE_ACTIVE if active else _SERVER_CLOSE_PASSIVE))


_CKKS_CLIENT: dict[tuple[ClientStage, ClientInput], ClientStage] = {
    (_C.NEW, START): _C.AWAIT_SUM,
    (_C.AWAIT_SUM, MsgType.ENCRYPTED_SUM): _C.DONE,
}
_SUM_AFTER_UNMASK: dict[tuple[ClientStage, ClientInput], ClientStage] = {
    (_C.AWAIT_UNMASK, MsgType.UNMASK_REQUEST): _C.AWAIT_SUM,
    (_C.AWAIT_SUM, MsgType.ENCRYPTED_SUM): _C.DONE,
}
_KEY_CLIENT: dict[tuple[ClientStage, ClientInput], ClientStage] = {
    (_C.NEW, START): _C.AWAIT_ROSTER,
    (_C.AWAIT_ROSTER, MsgType.KEY_ROSTER): _C.AWAIT_KEY,
    (_C.AWAIT_KEY, MsgType.KEY_DELIVERY): _C.DONE,
}


def client_table_for(config: SecAggConfig) -> ClientTable:
    """The client table of ``config.protocol`` (active or passive)."""
    if config.protocol is ProtocolKind.CKKS:
        return ClientTable(dict(_CKKS_CLIENT))
    table = client_table(secure=config.is_secure, active=config.active)
    if config.protocol is ProtocolKind.CKKS_MASK:
        return ClientTable({**table.moves, **_SUM_AFTER_UNMASK})
    return table


def server_table_for(config: SecAggConfig) -> ServerTable:
    """The server table of ``config.protocol`` (active or passive)."""
    if config.protocol is ProtocolKind.CKKS:
        return ServerTable({_S.MASKED_INPUT: MsgType.CKKS_INPUT}, {_S.MASKED_INPUT: _S.DONE})
    table = server_table(secure=config.is_secure, active=config.active)
    if config.protocol is ProtocolKind.CKKS_MASK:
        table.accept[_S.MASKED_INPUT] = MsgType.CKKS_INPUT
    return table


def key_setup_client_table() -> ClientTable:
    """The client table of the CKKS key setup (the leader, too, waits for its delivery)."""
    return ClientTable(dict(_KEY_CLIENT))


def key_setup_server_table() -> ServerTable:
    """The server table of the CKKS key setup."""
    return ServerTable(
        {_S.ADVERTISE: MsgType.KEY_ADVERT, _S.DISTRIBUTE: MsgType.KEY_DISTRIBUTION,
         _S.CONFIRM: MsgType.KEY_CONFIRM},
        {_S.ADVERTISE: _S.DISTRIBUTE, _S.DISTRIBUTE: _S.CONFIRM, _S.CONFIRM: _S.DONE},
    )

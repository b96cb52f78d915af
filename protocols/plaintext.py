"""The plaintext baseline: the same interface and wire, no masking and no keys.

Clients send their fixed-point encoded input in the clear (one ``MaskedInput`` holding the
unmasked ring vector); the server adds them up. Useful as the benchmark's floor and to check
that the secure protocols add nothing but the masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from secagg.packing import pack, unpack_add_into
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import FloatVector, check_input, decode_aggregate, encode_input
from secagg.protocols.errors import LocalProtocolError, RemoteProtocolError, ThresholdError
from secagg.protocols.messages import MaskedInput, Message
from secagg.protocols.participant import ClientBase, ServerBase
from secagg.protocols.transitions import ServerStage, client_table, server_table

__all__ = ["PlainClient", "PlainServer"]


class PlainClient(ClientBase[RoundContext]):
    """A client of the plaintext baseline: ``start(x)`` returns its only message."""

    def __init__(self, ctx: RoundContext, client_id: int, **_ignored: Any) -> None:
        """Create the client (extra keywords, e.g. ``identity``, are ignored).

        Raises:
            TypeError: ``ctx`` is not a RoundContext.
            LocalProtocolError: not a client of the round, or a secure config.
        """
        super().__init__(ctx, client_id, client_table(secure=False, active=False))
        if ctx.config.is_secure:
            raise LocalProtocolError("PlainClient needs protocol='plain'")

    def _on_start(self, x: Any, weight: float | None) -> list[Message]:
        checked: tuple[FloatVector, float] = check_input(self._ctx, x, weight)
        ring = encode_input(self._ctx, *checked)
        bits = self._ctx.config.bits
        return [MaskedInput(self._ctx.round_id, self._id, len(ring), bits, pack(ring, bits))]

    def _dispatch(self, msg: Message) -> list[Message]:  # pragma: no cover (table rejects)
        raise RemoteProtocolError(f"unexpected {msg.TYPE.name}")

    def _wipe(self) -> None:
        """Nothing secret to wipe."""


class PlainServer(ServerBase[RoundContext]):
    """The server of the plaintext baseline: sums the encoded inputs."""

    def __init__(self, ctx: RoundContext) -> None:
        """Create the server.

        Raises:
            TypeError: ``ctx`` is not a RoundContext.
            LocalProtocolError: a secure config.
        """
        super().__init__(ctx, server_table(secure=False, active=False))
        if ctx.config.is_secure:
            raise LocalProtocolError("PlainServer needs protocol='plain'")
        self._acc: npt.NDArray[np.uint32] = np.zeros(ctx.vector_length, dtype=np.uint32)

    def _accept(self, sender: int, msg: Message) -> None:
        ctx = self._ctx
        assert isinstance(msg, MaskedInput)
        if msg.count != ctx.vector_length or msg.bits != ctx.config.bits:
            raise RemoteProtocolError(
                f"input must be {ctx.vector_length} values of {ctx.config.bits} bits")
        try:
            unpack_add_into(self._acc, msg.data, msg.bits, msg.count)
        except ValueError as exc:
            raise RemoteProtocolError(f"input does not unpack: {exc}") from None

    def _close(self, stage: ServerStage, received: frozenset[int]) -> dict[int, Message]:
        if not received:
            raise ThresholdError("no client sent an input")
        bits = self._ctx.config.bits
        if bits < 32:
            np.bitwise_and(self._acc, np.uint32((1 << bits) - 1), out=self._acc)
        self._result = decode_aggregate(self._ctx, self._acc, tuple(sorted(received)))
        return {}

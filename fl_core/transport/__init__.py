"""ZeroMQ transport: sockets and framing, below everything else in ``fl_core``.

- :mod:`.sockets`: :class:`ServerTransport` (ROUTER) and :class:`ClientTransport` (DEALER),
  CurveZMQ, limits and liveness;
- :mod:`.envelope`: the authenticated frame around every protocol message (round, stage,
  sender, sequence number);
- :mod:`.endpoint`, :mod:`.common`: what both ends share (socket set-up, limits, receive
  loops).

Imports flow down only: this package uses :mod:`secagg.fl_core.errors` and
:mod:`secagg.fl_core.identity` (key types), never the runtime or the CLI.
"""

from secagg.fl_core.transport.sockets import (
    ClientTransport,
    ServerTransport,
    SocketOptions,
    TransportLimits,
)

__all__ = ["ClientTransport", "ServerTransport", "SocketOptions", "TransportLimits"]

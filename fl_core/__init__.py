"""The runtime layer: everything with a socket, a clock or a file.

So far: :mod:`fl_core.envelope` (the transport envelope), :mod:`fl_core.keys` and
:mod:`fl_core.keyfiles` (Curve keys bound to client identities, key files),
:mod:`fl_core.transport` (ZeroMQ ROUTER/DEALER with CurveZMQ and a ZAP allowlist) and
:mod:`fl_core.cli` (the ``secagg`` console script). Nothing is imported eagerly here.
"""

"""The runtime layer: everything with a socket, a clock or a file.

So far: :mod:`fl_core.envelope` (the transport envelope), :mod:`fl_core.keys` and
:mod:`fl_core.keyfiles` (Curve keys bound to client identities, key files),
:mod:`fl_core.transport` (ZeroMQ ROUTER/DEALER with CurveZMQ and a ZAP allowlist) and
:mod:`fl_core.cli` (the ``secagg`` console script: ``keygen``, ``bench``, ``serve``,
``client``, ``run``). The runtime: :mod:`fl_core.rounds` (stage numbers, control messages),
:mod:`fl_core.driver` (deadlines -> dropouts, client sampling), :mod:`fl_core.server_app`
and :mod:`fl_core.client_app` (the loops), :mod:`fl_core.checkpoint` (atomic checkpoints,
resume), :mod:`fl_core.commands` and :mod:`fl_core.runner` (the subcommands). Nothing is
imported eagerly here.
"""

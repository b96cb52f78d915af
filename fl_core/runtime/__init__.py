"""The round runtime over ZeroMQ: what a server and a client do with the transport.

- :mod:`.driver`: one round with deadlines (stages, probes, missing clients);
- :mod:`.rounds`: per-round limits and the stage table;
- :mod:`.cohort`: sampling and the per-round protocol parameters (the server's own rule);
- :mod:`.policy`: the pinned policy a client checks every round against its own files;
- :mod:`.server_app`, :mod:`.client_app`: the long-running server and client loops;
- :mod:`.tasks`: what a round computes (FedAvg, or a fine-tuning task);
- :mod:`.checkpoint`: crash-safe server state.

Uses :mod:`secagg.fl_core.transport`, :mod:`secagg.fl_core.identity` and
:mod:`secagg.fl_core.dp`; the CLI (:mod:`secagg.fl_core.cli`) sits above it.
"""

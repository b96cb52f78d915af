"""Flower integration (``pip install secagg[flower]``): our protocols over Flower's Messages.

The protocol objects are the same sans-IO participants as everywhere else; only the carrier
differs. :func:`secagg_mod` is the client mod, :class:`SecAggWorkflow` the server side (a
``fit_workflow`` for ``DefaultWorkflow``, or :meth:`SecAggWorkflow.run_round` from a Message-API
``ServerApp``). A Flower app that uses Flower's SecAgg+ switches like this::

    -from flwr.client.mod import secaggplus_mod
    -from flwr.server.workflow import SecAggPlusWorkflow
    +from fl_core.flower import secagg_mod, SecAggWorkflow

    -app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    +app = ClientApp(client_fn=client_fn, mods=[secagg_mod])

    -    fit_workflow=SecAggPlusWorkflow(num_shares=5, reconstruction_threshold=3)
    +    fit_workflow=SecAggWorkflow("secagg+", clip=1.0)   # or "secagg", "ckks", "ckks+mask"

Dropouts: a client whose ClientApp raises (Flower returns an error reply), or that does not
answer before ``timeout``, is reported to the sans-IO server as missing at that stage; the
round completes if at least the threshold survive. Passive mode only (no Ed25519 identities
over Flower yet).
"""

from secagg.fl_core.flower.mod import flatten_arrays, secagg_mod
from secagg.fl_core.flower.workflow import FlowerRound, SecAggWorkflow

__all__ = ["FlowerRound", "SecAggWorkflow", "flatten_arrays", "secagg_mod"]

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
    +    fit_workflow=SecAggWorkflow.from_policy("policy.toml", keys="cards/")

Each node pins its own policy file (node config ``secagg-policy``; format and keys in
:mod:`secagg.fl_core.flower.policy`): protocol, active mode, thresholds, fixed point, DP and
the peers' keys come from the node's own files, never from the server. A node without one
refuses every round unless it opts in to trusting the server (``secagg-insecure=true``,
passive mode only, for ``SecAggWorkflow("secagg+", clip=1.0)`` without a policy). A node
with ``[dp]`` keeps its own privacy ledger (:mod:`secagg.fl_core.flower.ledger`), charged
before each release, so a server that restarts its own books gets no round past the node's
budget.

Dropouts: a client whose ClientApp raises (Flower returns an error reply), refuses the round,
or does not answer before ``timeout`` is reported to the sans-IO server as missing at that
stage; the round completes if at least the threshold survive.
"""

from secagg.fl_core.flower.mod import flatten_arrays, secagg_mod, simulation_node_config
from secagg.fl_core.flower.policy import (
    NODE_INSECURE_KEY,
    NODE_POLICY_KEY,
    FederationPolicy,
    NodePolicyError,
    NoNodePolicy,
    load_node_policy,
)
from secagg.fl_core.flower.privacy import PrivacyBudgetExhausted
from secagg.fl_core.flower.workflow import FlowerRound, SecAggWorkflow

__all__ = [
    "NODE_INSECURE_KEY",
    "NODE_POLICY_KEY",
    "FederationPolicy",
    "FlowerRound",
    "NoNodePolicy",
    "NodePolicyError",
    "PrivacyBudgetExhausted",
    "SecAggWorkflow",
    "flatten_arrays",
    "load_node_policy",
    "secagg_mod",
    "simulation_node_config",
]

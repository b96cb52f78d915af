"""The ``LegacyContext`` glue: one fit round of a Flower ``Strategy`` through our workflow.

Mirrors the end of Flower's ``SecAggPlusWorkflow``: the strategy samples and configures the
clients, the secure round yields the mean update, every surviving client's ``FitRes`` gets
that mean as its parameters and ``Strategy.aggregate_fit`` (FedAvg of identical vectors) writes
it back to the global model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import flwr.compat.common.recorddict_compat as compat
from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from secagg.fl_core.flower.privacy import PrivacyBudgetExhausted
from secagg.protocols.errors import ConfigError, RemoteProtocolError, ThresholdError

if TYPE_CHECKING:
    from flwr.app import RecordDict

    from secagg.fl_core.flower.result import FlowerRound

__all__ = ["RoundRunner", "legacy_fit_round"]

log = logging.getLogger(__name__)


class RoundRunner(Protocol):
    """What the glue needs of a workflow (:class:`~secagg.fl_core.flower.SecAggWorkflow`):
    one secure round over given nodes. A protocol, so this module never imports the workflow
    (the workflow imports it)."""

    def run_round(self, grid: Grid, fit: Mapping[int, RecordDict], *, round_id: int,
                  ) -> FlowerRound:
        """One round over the nodes that are the keys of ``fit``."""


def legacy_fit_round(wf: RoundRunner, grid: Grid, context: Any) -> bool:
    """Run one fit round; return False if the round did not aggregate (too few survivors,
    no sum known to the server)."""
    cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
    current_round = cast(int, cfg[WorkflowKey.CURRENT_ROUND])
    parameters = compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    pairs = context.strategy.configure_fit(current_round, parameters, context.client_manager)
    if not pairs:
        log.warning("configure_fit: no clients selected, round %d cancelled", current_round)
        return False
    proxies = {p.node_id: p for p, _ in pairs}
    fit = {p.node_id: compat.fitins_to_recorddict(ins, True) for p, ins in pairs}
    try:
        res = wf.run_round(grid, fit, round_id=current_round)
    except (ThresholdError, RemoteProtocolError, ConfigError, PrivacyBudgetExhausted) as exc:
        # too few survivors or identified nodes, a cohort the policy does not allow, the
        # privacy budget spent (PrivacyBudgetExhausted): the global model stays as it was
        log.warning("round %d halted: %s", current_round, exc)
        return False
    mean = res.mean
    if mean is None:
        log.warning("round %d: the sum stays with the clients (reveal_ckks_sum=False)",
                    current_round)
        return False
    template = parameters_to_ndarrays(parameters)
    arrays, pos = [], 0
    for t in template:
        arrays.append(mean[pos:pos + t.size].reshape(t.shape).astype(t.dtype))
        pos += t.size
    agg = ndarrays_to_parameters(arrays)
    results = []
    for cid in res.included:
        content = res.fit_replies.get(cid)
        if content is None:
            continue
        fitres: FitRes = compat.recorddict_to_fitres(content, keep_input=True)
        fitres.parameters = agg
        results.append((proxies[res.node_of[cid]], fitres))
    failures = [BaseException(f"node {proxies[n].node_id} dropped")
                for n in proxies if n not in set(res.included_nodes)]
    params_agg, metrics = context.strategy.aggregate_fit(current_round, results, failures)
    if params_agg:
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            params_agg, True)
        context.history.add_metrics_distributed_fit(server_round=current_round, metrics=metrics)
    return True

"""Secure aggregation protocols as sans-IO state machines (DESIGN part 2).

SecAgg (Bonawitz et al., CCS 2017), SecAgg+ (Bell et al., CCS 2020) and a plaintext baseline,
with one validated config, typed messages, one wire codec and one transition table per role.

Quick start::

    from protocols import SecAggConfig, run_round
    cfg = SecAggConfig(protocol="secagg+", n=20)
    result = run_round(cfg, {i: x_i for i, x_i in enumerate(xs)}, drop={"masked_input": {3}})
    result.aggregate, result.included
"""

from protocols import errors, labels, wire
from protocols.client import SecAggClient
from protocols.config import ProtocolKind, SecAggConfig
from protocols.context import RoundContext
from protocols.encoding import Aggregate
from protocols.errors import (
    ConfigError,
    InputError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ThresholdError,
)
from protocols.harness import RoundResult, RoundSimulation, create_client, create_server, run_round
from protocols.plaintext import PlainClient, PlainServer
from protocols.server import SecAggServer
from protocols.transitions import ClientStage, ServerStage

__all__ = [
    "Aggregate",
    "ClientStage",
    "ConfigError",
    "InputError",
    "LocalProtocolError",
    "PlainClient",
    "PlainServer",
    "ProtocolError",
    "ProtocolKind",
    "RemoteProtocolError",
    "RoundContext",
    "RoundResult",
    "RoundSimulation",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "ServerStage",
    "ThresholdError",
    "create_client",
    "create_server",
    "errors",
    "labels",
    "run_round",
    "wire",
]

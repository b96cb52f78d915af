"""Secure aggregation protocols as sans-IO state machines (DESIGN part 2).

SecAgg (Bonawitz et al., CCS 2017), SecAgg+ (Bell et al., CCS 2020), CKKS aggregation
(``"ckks"``: the keyless server adds ciphertexts; ``"ckks+mask"``: SecAgg+ masks under CKKS,
collusion resistant) with a dealer-free CKKS key setup, and a plaintext baseline, with one
validated config, typed messages, one wire codec and one transition table per role.

Quick start::

    from protocols import SecAggConfig, run_round
    cfg = SecAggConfig(protocol="secagg+", n=20)
    result = run_round(cfg, {i: x_i for i, x_i in enumerate(xs)}, drop={"masked_input": {3}})
    result.aggregate, result.included

    cfg = SecAggConfig(protocol="ckks+mask", n=20)   # first round runs the key setup
    r1 = run_round(cfg, inputs)
    r2 = run_round(cfg, inputs, round_id=2, keys=r1.keys)  # same key epoch
"""

from protocols import errors, labels, wire
from protocols.ckks_harness import CkksKeyring, KeySetupResult, setup_keys
from protocols.ckks_mask import CkksMaskClient, CkksMaskServer
from protocols.ckks_round import CkksClient, CkksServer
from protocols.client import SecAggClient
from protocols.config import ProtocolKind, SecAggConfig
from protocols.context import RoundContext
from protocols.encoding import Aggregate
from protocols.epoch import EpochContext
from protocols.errors import (
    ConfigError,
    InputError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ThresholdError,
)
from protocols.federation import CkksFederation
from protocols.harness import RoundResult, RoundSimulation, create_client, create_server, run_round
from protocols.keysetup import EpochKeys, KeySetupClient, KeySetupServer
from protocols.plaintext import PlainClient, PlainServer
from protocols.server import SecAggServer
from protocols.transitions import ClientStage, ServerStage

__all__ = [
    "Aggregate",
    "CkksClient",
    "CkksFederation",
    "CkksKeyring",
    "CkksMaskClient",
    "CkksMaskServer",
    "CkksServer",
    "ClientStage",
    "ConfigError",
    "EpochContext",
    "EpochKeys",
    "InputError",
    "KeySetupClient",
    "KeySetupResult",
    "KeySetupServer",
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
    "setup_keys",
    "wire",
]

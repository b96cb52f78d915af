"""Secure aggregation protocols as sans-IO state machines (DESIGN part 2).

SecAgg (Bonawitz et al., CCS 2017), SecAgg+ (Bell et al., CCS 2020), CKKS aggregation
(``"ckks"``: the keyless server adds ciphertexts; ``"ckks+mask"``: SecAgg+ masks under CKKS,
collusion resistant) with a dealer-free CKKS key setup, and a plaintext baseline, with one
validated config, typed messages, one wire codec and one transition table per role.

The import surface (``__all__``):

- configure: :class:`SecAggConfig` (keyword-only, frozen, validated; derives ``k``,
  ``threshold``, ``bits`` and ``scale`` safely), :class:`ProtocolKind`;
- simulate: :func:`run_round` -> :class:`RoundResult`, :class:`RoundSimulation` (tamper hooks),
  :func:`setup_keys` / :class:`CkksKeyring` / :class:`CkksFederation` (CKKS key epochs);
- carry over your own transport: :func:`create_client` / :func:`create_server` for a
  :class:`RoundContext`, the participants (:class:`SecAggClient`, :class:`SecAggServer`,
  :class:`CkksClient`, :class:`CkksServer`, :class:`CkksMaskClient`, :class:`CkksMaskServer`,
  :class:`PlainClient`, :class:`PlainServer`, :class:`KeySetupClient`,
  :class:`KeySetupServer`), their stages (:class:`ClientStage`, :class:`ServerStage`) and
  the one codec, :mod:`secagg.protocols.wire` (``wire.encode(msg)`` / ``wire.decode(data)``);
- errors: :class:`ProtocolError` > :class:`LocalProtocolError` (> :class:`InputError`,
  :class:`ConfigError`), :class:`RemoteProtocolError`, :class:`ThresholdError`.

Examples (run as doctests by ``tests/test_docs.py``).

Configure SecAgg+ for 20 clients; ``k`` and ``threshold`` follow Bell et al.'s bounds at
``sigma=40``, ``eta=30`` for the default 10% dropout and 5% corruption rates:

>>> import numpy as np
>>> from secagg.protocols import SecAggConfig, ThresholdError, run_round
>>> cfg = SecAggConfig(protocol="secagg+", n=20)
>>> cfg.k, cfg.threshold, cfg.bits, cfg.scale
(8, 6, 22, 16)

Run one simulated round in which clients 3 and 7 vanish after sharing their keys (their
pairwise masks are recovered from the survivors' shares). Inputs on the fixed-point grid
(multiples of ``2^-scale``) come back exactly:

>>> xs = {i: np.array([0.25, -0.5, 0.125 * (i % 4)]) for i in range(20)}
>>> res = run_round(cfg, xs, drop={"masked_input": {3, 7}})
>>> res.included == tuple(i for i in range(20) if i not in (3, 7))
True
>>> expected = sum(xs[i] for i in res.included)
>>> bool(np.array_equal(res.aggregate, expected)), res.aggregate.tolist()
(True, [4.5, -9.0, 3.0])

Below the threshold the round aborts with a typed error instead of revealing anything:

>>> small = SecAggConfig(protocol="secagg", n=5)
>>> small.k, small.threshold
(4, 4)
>>> run_round(small, {i: np.zeros(2) for i in range(5)}, drop={"masked_input": {0, 1}})
Traceback (most recent call last):
    ...
secagg.protocols.errors.ThresholdError: only 3 clients completed masked_input, need 4

CKKS with masking: the first round runs the dealer-free key setup; later rounds of the same
key epoch reuse ``res.keys``:

>>> ck = SecAggConfig(protocol="ckks+mask", n=6)
>>> ys = {i: np.linspace(-1, 1, 5) * (i % 2) for i in range(6)}
>>> r1 = run_round(ck, ys, drop={"masked_input": {0}})
>>> r1.included, np.round(r1.aggregate, 3).tolist()
((1, 2, 3, 4, 5), [-3.0, -1.5, 0.0, 1.5, 3.0])
>>> r2 = run_round(ck, ys, round_id=2, keys=r1.keys)
>>> len(r2.included), r2.key_setup is None
(6, True)
"""

import importlib
from typing import TYPE_CHECKING, Any

from secagg.protocols import errors, labels, wire
from secagg.protocols.client import SecAggClient
from secagg.protocols.config import ProtocolKind, SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import Aggregate
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import (
    ConfigError,
    InputError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ThresholdError,
)
from secagg.protocols.harness import (
    RoundResult,
    RoundSimulation,
    create_client,
    create_server,
    run_round,
)
from secagg.protocols.plaintext import PlainClient, PlainServer
from secagg.protocols.server import SecAggServer
from secagg.protocols.transitions import ClientStage, ServerStage

if TYPE_CHECKING:
    from secagg.protocols.ckks_harness import CkksKeyring, KeySetupResult, setup_keys
    from secagg.protocols.ckks_mask import CkksMaskClient, CkksMaskServer
    from secagg.protocols.ckks_round import CkksClient, CkksServer
    from secagg.protocols.federation import CkksFederation
    from secagg.protocols.keysetup import EpochKeys, KeySetupClient, KeySetupServer

# CKKS needs TenSEAL (the ``ckks`` extra): its names load on first use, so the core install
# imports the masking protocols without it.
_CKKS = {
    "CkksKeyring": "ckks_harness", "KeySetupResult": "ckks_harness", "setup_keys": "ckks_harness",
    "CkksMaskClient": "ckks_mask", "CkksMaskServer": "ckks_mask",
    "CkksClient": "ckks_round", "CkksServer": "ckks_round",
    "CkksFederation": "federation",
    "EpochKeys": "keysetup", "KeySetupClient": "keysetup", "KeySetupServer": "keysetup",
}


def __getattr__(name: str) -> Any:
    """Load a CKKS name on first use.

    Raises:
        AttributeError: for a name this package does not have.
        ImportError: for a CKKS name when TenSEAL (``pip install 'secagg[ckks]'``) is missing.
    """
    if name not in _CKKS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_CKKS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CKKS))

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

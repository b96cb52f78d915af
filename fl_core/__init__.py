"""The runtime layer: everything with a socket, a clock or a file.

One import surface, loaded lazily: ``import fl_core`` imports nothing heavy, and each name
below imports its submodule (and with it ZeroMQ, or dp-accounting) on first use only.

- Transport: :class:`ServerTransport` (a ROUTER, CurveZMQ with a ZAP allowlist unless
  ``insecure=True``), :class:`ClientTransport` (a DEALER), :class:`TransportLimits`
  (:func:`limits_for` gives generous ones for ``n`` clients and ``dim`` values),
  :class:`SocketOptions`.
- Keys: :class:`CurveKeyPair` (the server), :class:`ClientKeys` (a client's Curve key pair and
  Ed25519 identity, bound by a signed card), :class:`Allowlist` (the server's verified cards).
  Key files on disk: :mod:`secagg.fl_core.identity.keyfiles` (``secagg keygen`` writes them).
- Loops: :func:`serve` with :class:`ServerSettings` and :class:`DriverSettings` (deadlines ->
  dropouts), a :class:`ServerTask` (default :class:`FedAvgTask`) that applies each
  :class:`RoundOutcome`; :func:`run_client` with :class:`ClientSettings`, an ``update``
  callable ``(round_id, global_state) -> vector`` (default :func:`synthetic_update`) and the
  client's own :class:`ClientPolicy` (:meth:`ClientPolicy.from_key_folder` builds it from its
  key folder): every round start is checked against it, and without one :func:`run_client`
  raises :class:`PolicyRequired` unless told ``insecure=True`` (tests only).
- Checkpoints: :class:`Checkpoint`, :func:`resume`, :class:`CheckpointError`.
- Differential privacy (also :mod:`secagg.fl_core.dp`): :class:`DpConfig`, :class:`NoiseSource`,
  :func:`clip_l2`, :func:`add_local_noise`, :func:`add_distributed_noise`,
  :class:`PrivacyAccountant`, :func:`calibrate_noise_multiplier`.
- The fine-tuning job: :class:`FinetuneJob` (:mod:`secagg.fl_core.finetune`); the command line:
  :func:`main` (the ``secagg`` console script). Flower: :mod:`secagg.fl_core.flower` (optional
  extra).
- Errors: :class:`FlCoreError`, :class:`TransportError` and :class:`PolicyRequired` (all under
  :class:`secagg.errors.SecAggError`), :class:`DpConfigError`.

A server and three clients over real loopback ZeroMQ sockets, clients in threads. This one
runs with ``insecure=True`` transports (CurveZMQ off, passive protocol): for the example and
tests only; docs/api.md runs the same federation with Curve keys and active mode. Each client
still pins its policy (the same config and ``dim`` as the server's), so a server cannot talk it
into another protocol:

>>> import tempfile, threading
>>> from pathlib import Path
>>> import numpy as np
>>> from secagg import fl_core
>>> limits = fl_core.limits_for(3, 4)                       # n = 3 clients, dim = 4
>>> server = fl_core.ServerTransport("tcp://127.0.0.1:*", limits=limits, insecure=True)
>>> settings = fl_core.ServerSettings(
...     config_args={"protocol": "secagg+", "n": 3, "active": False}, dim=4, rounds=1,
...     checkpoint=Path(tempfile.mkdtemp()) / "ck.json",
...     driver=fl_core.DriverSettings(join_timeout_s=20.0))
>>> policy = fl_core.ClientPolicy(config_args={"protocol": "secagg+", "n": 3, "active": False},
...                               dim=4)                   # the client's own files say so
>>> def client(cid: int) -> None:                           # sends cid / 10 everywhere
...     with fl_core.ClientTransport(server.endpoint, client_id=cid, limits=limits,
...                                  insecure=True) as t:
...         fl_core.run_client(t, update=lambda round_id, state: np.full(4, cid / 10),
...                            policy=policy,
...                            settings=fl_core.ClientSettings(idle_timeout_s=20.0))
>>> threads = [threading.Thread(target=client, args=(c,)) for c in (1, 2, 3)]
>>> for th in threads:
...     th.start()
>>> with server:
...     ckpt = fl_core.serve(server, settings)
>>> for th in threads:
...     th.join()
>>> ckpt.step, np.round(ckpt.state, 4).tolist()           # state += mean of 0.1, 0.2, 0.3
(1, [0.2, 0.2, 0.2, 0.2])

Plug in DP and an accountant: solve sigma for a target epsilon, give each party a clipped,
noised share, and account the rounds (every draw comes from the CSPRNG :class:`NoiseSource`).
Record level: each party Poisson-samples its own records at rate 0.1, so the amplification is
earned; ``bound="zcdp"`` is the proven bound for a sum of discrete Gaussian shares:

>>> sigma = fl_core.calibrate_noise_multiplier(target_epsilon=4.0, delta=1e-5,
...                                            sample_rate=0.1, steps=20, bound="zcdp")
>>> cfg = fl_core.DpConfig(unit="record", placement="distributed", clip=1.0,
...                        noise_multiplier=sigma, delta=1e-5, sample_rate=0.1, threshold=3)
>>> x, norm = fl_core.clip_l2(np.full(16, 0.5), cfg.clip)   # norm 2.0 -> scaled to 1.0
>>> share = fl_core.add_distributed_noise(x, cfg, fl_core.NoiseSource())
>>> round(norm, 3), share.shape, bool(np.all(share * 2**14 == np.round(share * 2**14)))
(2.0, (16,), True)
>>> from secagg.fl_core.dp import effective_noise_multiplier         # the KLS21 sum's zCDP
>>> acc = fl_core.PrivacyAccountant(noise_multiplier=effective_noise_multiplier(cfg, 16),
...                                 sample_rate=0.1, delta=1e-5, bound="zcdp")
>>> acc.step(20)
>>> round(acc.epsilon(), 2)
4.0
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from secagg.fl_core.cli.entry import main
    from secagg.fl_core.dp import (
        DpConfig,
        DpConfigError,
        NoiseSource,
        PrivacyAccountant,
        add_distributed_noise,
        add_local_noise,
        calibrate_noise_multiplier,
        clip_l2,
    )
    from secagg.fl_core.errors import FlCoreError, PolicyRequired, TransportError
    from secagg.fl_core.finetune.job import FinetuneJob
    from secagg.fl_core.identity.keys import Allowlist, ClientKeys, CurveKeyPair
    from secagg.fl_core.runtime.checkpoint import Checkpoint, CheckpointError, resume
    from secagg.fl_core.runtime.client_app import ClientSettings, run_client
    from secagg.fl_core.runtime.driver import DriverSettings, RoundOutcome
    from secagg.fl_core.runtime.policy import ClientPolicy
    from secagg.fl_core.runtime.rounds import limits_for, synthetic_update
    from secagg.fl_core.runtime.server_app import ServerSettings, serve
    from secagg.fl_core.runtime.tasks import FedAvgTask, ServerTask
    from secagg.fl_core.transport.sockets import (
        ClientTransport,
        ServerTransport,
        SocketOptions,
        TransportLimits,
    )

# name -> submodule that defines it (imported on first attribute access).
_LAZY: dict[str, str] = {
    "Allowlist": "secagg.fl_core.identity.keys",
    "Checkpoint": "secagg.fl_core.runtime.checkpoint",
    "CheckpointError": "secagg.fl_core.runtime.checkpoint",
    "ClientKeys": "secagg.fl_core.identity.keys",
    "ClientPolicy": "secagg.fl_core.runtime.policy",
    "ClientSettings": "secagg.fl_core.runtime.client_app",
    "ClientTransport": "secagg.fl_core.transport.sockets",
    "CurveKeyPair": "secagg.fl_core.identity.keys",
    "DpConfig": "secagg.fl_core.dp",
    "DpConfigError": "secagg.fl_core.dp",
    "DriverSettings": "secagg.fl_core.runtime.driver",
    "FedAvgTask": "secagg.fl_core.runtime.tasks",
    "FinetuneJob": "secagg.fl_core.finetune.job",
    "FlCoreError": "secagg.fl_core.errors",
    "NoiseSource": "secagg.fl_core.dp",
    "PolicyRequired": "secagg.fl_core.errors",
    "PrivacyAccountant": "secagg.fl_core.dp",
    "RoundOutcome": "secagg.fl_core.runtime.driver",
    "ServerSettings": "secagg.fl_core.runtime.server_app",
    "ServerTask": "secagg.fl_core.runtime.tasks",
    "ServerTransport": "secagg.fl_core.transport.sockets",
    "SocketOptions": "secagg.fl_core.transport.sockets",
    "TransportError": "secagg.fl_core.errors",
    "TransportLimits": "secagg.fl_core.transport.sockets",
    "add_distributed_noise": "secagg.fl_core.dp",
    "add_local_noise": "secagg.fl_core.dp",
    "calibrate_noise_multiplier": "secagg.fl_core.dp",
    "clip_l2": "secagg.fl_core.dp",
    "limits_for": "secagg.fl_core.runtime.rounds",
    "main": "secagg.fl_core.cli.entry",
    "resume": "secagg.fl_core.runtime.checkpoint",
    "run_client": "secagg.fl_core.runtime.client_app",
    "serve": "secagg.fl_core.runtime.server_app",
    "synthetic_update": "secagg.fl_core.runtime.rounds",
}

__all__ = [
    "Allowlist",
    "Checkpoint",
    "CheckpointError",
    "ClientKeys",
    "ClientPolicy",
    "ClientSettings",
    "ClientTransport",
    "CurveKeyPair",
    "DpConfig",
    "DpConfigError",
    "DriverSettings",
    "FedAvgTask",
    "FinetuneJob",
    "FlCoreError",
    "NoiseSource",
    "PolicyRequired",
    "PrivacyAccountant",
    "RoundOutcome",
    "ServerSettings",
    "ServerTask",
    "ServerTransport",
    "SocketOptions",
    "TransportError",
    "TransportLimits",
    "add_distributed_noise",
    "add_local_noise",
    "calibrate_noise_multiplier",
    "clip_l2",
    "limits_for",
    "main",
    "resume",
    "run_client",
    "serve",
    "synthetic_update",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use (PEP 562).

    Raises:
        AttributeError: ``name`` is neither a public name nor a submodule.
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fl_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Public names and what is already loaded."""
    return sorted(set(globals()) | set(__all__))

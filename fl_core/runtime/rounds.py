"""What server and client apps agree on around the protocol: stage numbers, the control
messages (round start, goodbye), the transport limits of a round, and a synthetic update.

Envelope stages: ``0`` is the control channel (client hellos and heartbeats, the server's
round start and goodbye); protocol stages are numbered ``1 + index`` in
:class:`secagg.protocols.transitions.ServerStage`, the stage the server is collecting when the
message is sent. No protocol logic here: the protocol's bytes ride opaquely.

A round start is ``u32 header length | JSON header | float64 global state`` (the state may be
absent: ``"state": false`` in the header, under CKKS or with ``--no-state-broadcast``). The header
carries everything public the client needs to build the same
:class:`secagg.protocols.context.RoundContext` as the server: the config's constructor arguments
(both sides derive the rest identically; the context digest binds them), round id, dim,
sampled ids and, in active mode, the sampled clients' Ed25519 verify keys from the server's
allowlist (each bound to its Curve key by a signature checked when the allowlist loaded), and
the server's policy document (:mod:`secagg.fl_core.runtime.policy`). None of it is authority: a
client
rebuilds every value from its own pinned policy and key files, compares, and refuses a
mismatch (:meth:`secagg.fl_core.runtime.policy.ClientPolicy.check_start`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from secagg.fl_core.errors import EnvelopeError
from secagg.fl_core.transport.sockets import TransportLimits
from secagg.protocols.config import SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.transitions import ServerStage
from secagg.sign import VerifyKey

__all__ = [
    "CONTROL",
    "STAGE_NUMBERS",
    "RoundStart",
    "control_message",
    "limits_for",
    "parse_control",
    "stage_number",
    "synthetic_update",
]

CONTROL: Final = 0
STAGE_NUMBERS: Final = {s: i + 1 for i, s in enumerate(ServerStage)}
_LEN: Final = struct.Struct(">I")
_MAX_HEADER: Final = 4 * 1024 * 1024


def stage_number(stage: ServerStage) -> int:
    """The envelope stage of messages sent while the server collects ``stage``."""
    return STAGE_NUMBERS[stage]


def limits_for(n_max: int, dim: int, *, ckks: bool = False) -> TransportLimits:
    """Generous per-stage payload limits for rounds of ``n_max`` clients and ``dim`` values:
    a masked vector is at most 8 bytes a value, relays and rosters a few KiB per peer."""
    vector = 8 * dim + 1024 * 1024
    if ckks:  # ciphertexts: a few bytes a value at most, a key distribution ~64 KB a member
        vector = 32 * dim + 8 * 1024 * 1024
    per_peer = 64 * 1024 * max(n_max, 1) + 1024 * 1024
    stages = {CONTROL: vector + per_peer}
    stages.update({num: vector + per_peer for num in STAGE_NUMBERS.values()})
    return TransportLimits(stages)


@dataclass(frozen=True)
class RoundStart:
    """The public facts of a round, sent to each sampled client."""

    round_id: int
    step: int
    first_stage: int
    config: dict[str, Any]
    dim: int
    clients: tuple[int, ...]
    verify_keys: dict[int, bytes] | None
    state: npt.NDArray[np.float64] | None = field(repr=False)
    ckks_fingerprint: bytes | None = None
    state_float32: bool = False  # the state travels as float32 (read back as float64)
    policy: dict[str, Any] | None = None
    """The server's policy document (:func:`secagg.fl_core.runtime.policy.policy_document`): lets a
    client name the field where its own policy differs; the digest binds it either way."""

    def context(self, policy_digest: bytes | None = None) -> RoundContext:
        """The round's context (validated by the protocol layer).

        Raises:
            ConfigError / TypeError: the header does not make a valid context.
        """
        vks = None if self.verify_keys is None else {
            cid: VerifyKey.from_bytes(raw) for cid, raw in self.verify_keys.items()}
        return RoundContext(config=SecAggConfig(**self.config), round_id=self.round_id,
                            dim=self.dim, client_ids=self.clients, verify_keys=vks,
                            ckks_fingerprint=self.ckks_fingerprint,
                            policy_digest=policy_digest)

    def encode(self) -> bytes:
        """``u32 length | JSON header | state`` (float64, or float32 when ``state_float32``)."""
        head = json.dumps({
            "type": "start", "round": self.round_id, "step": self.step,
            "first_stage": self.first_stage, "config": self.config, "dim": self.dim,
            "clients": list(self.clients),
            "verify_keys": None if self.verify_keys is None else {
                str(c): k.hex() for c, k in self.verify_keys.items()},
            "state": self.state is not None,
            "state_dtype": "<f4" if self.state_float32 else "<f8",
            "ckks_fingerprint": None if self.ckks_fingerprint is None
            else self.ckks_fingerprint.hex(),
            "policy": self.policy,
        }).encode()
        if self.state is None:
            return _LEN.pack(len(head)) + head
        state = np.ascontiguousarray(self.state, dtype="<f4" if self.state_float32 else "<f8")
        return _LEN.pack(len(head)) + head + state.tobytes()


def control_message(kind: str, **fields: Any) -> bytes:
    """A header-only control message (``hello``, ``bye``, ``abort``)."""
    head = json.dumps({"type": kind, **fields}).encode()
    return _LEN.pack(len(head)) + head


def parse_control(data: bytes | memoryview) -> tuple[dict[str, Any], RoundStart | None]:
    """Split a control payload into its header and, for a round start, the :class:`RoundStart`.

    Raises:
        EnvelopeError: malformed (bad length, JSON, field types or state size).
    """
    view = memoryview(data)
    if view.nbytes < _LEN.size:
        raise EnvelopeError("control message too short")
    (n,) = _LEN.unpack(view[:_LEN.size])
    if n > min(_MAX_HEADER, view.nbytes - _LEN.size):
        raise EnvelopeError("control header length out of range")
    try:
        head = json.loads(bytes(view[_LEN.size:_LEN.size + n]))
        if not isinstance(head, dict) or not isinstance(head.get("type"), str):
            raise ValueError("not a control header")
        if head["type"] != "start":
            return head, None
        return head, _round_start(head, view[_LEN.size + n:])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise EnvelopeError(f"malformed control message: {exc}") from None


def _round_start(head: Mapping[str, Any], rest: memoryview) -> RoundStart:
    dim = int(head["dim"])
    has_state = bool(head.get("state", True))
    dtype = head.get("state_dtype", "<f8")
    if dtype not in ("<f8", "<f4"):
        raise ValueError(f"unknown state dtype {dtype!r}")
    width = 8 if dtype == "<f8" else 4
    if rest.nbytes != (width * dim if has_state else 0):
        raise ValueError(f"state is {rest.nbytes} bytes, dim {dim} needs {width * dim}")
    vks = head["verify_keys"]
    config = head["config"]
    if not isinstance(config, dict):
        raise TypeError("config must be an object")
    fp = head.get("ckks_fingerprint")
    policy = head.get("policy")
    if policy is not None and not isinstance(policy, dict):
        raise TypeError("policy must be an object")
    return RoundStart(
        round_id=int(head["round"]), step=int(head["step"]),
        first_stage=int(head["first_stage"]), config=dict(config), dim=dim,
        clients=tuple(int(c) for c in head["clients"]),
        verify_keys=None if vks is None else {int(c): bytes.fromhex(k) for c, k in vks.items()},
        state=np.frombuffer(rest, dtype=dtype).astype(np.float64) if has_state else None,
        ckks_fingerprint=None if fp is None else bytes.fromhex(str(fp)),
        state_float32=dtype == "<f4", policy=policy)


def synthetic_update(client_id: int, round_id: int, dim: int,
                     state: npt.NDArray[np.float64] | None = None) -> npt.NDArray[np.float64]:
    """A deterministic stand-in for local training (tests check sums against it): values in
    ``[-0.5, 0.5)`` seeded by ``(client_id, round_id)``; ``state`` is ignored."""
    del state
    return np.random.default_rng([client_id, round_id]).uniform(-0.5, 0.5, dim)

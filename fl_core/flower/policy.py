"""A Flower node's own policy: the node-config keys, the policy file, what it pins.

DESIGN part 6: the client never runs what the server alone decided. Over Flower the server's
record says which protocol, mode, thresholds, fixed point and peers a round has; a node takes
none of it on trust. Its operator writes a **policy file** and points the SuperNode at it::

    flower-supernode ... --node-config "secagg-policy='/etc/secagg/policy.toml'"

Node-config keys (:data:`NODE_POLICY_KEY`, :data:`NODE_INSECURE_KEY`):

- ``secagg-policy``: path of the node's policy file (TOML by a ``.toml`` suffix, else JSON).
- ``secagg-insecure``: ``true`` (bool, or the string ``"true"``) opts a node without a policy
  into trusting the server (passive mode only, every parameter as the server sends it, a
  passive CKKS key setup through the server as a trusted relay): the Flower twin of
  ``secagg client --insecure``. FOR TESTS AND TRUSTED SERVERS ONLY. Setting both keys is an
  error; setting neither makes :func:`secagg.fl_core.flower.secagg_mod` refuse every round
  (:class:`NoNodePolicy`).

The policy file (relative paths are relative to the file's folder)::

    protocol = "secagg+"      # required: "secagg", "secagg+", "ckks", "ckks+mask", "plain"
    n = 20                    # required: the largest cohort (the full config is for n)
    active = true             # default true (signed keys, consistency round)
    min_cohort = 15           # default n: the smallest cohort this node takes part in
    dim = 100000              # values per update; required with [dp], else the node's own
                              # update length is the pin
    clip = 1.0                # and any other SecAggConfig keyword: threshold, k, bits, scale,
                              # weighted, max_weight, dropout_rate, corruption_rate, sigma,
                              # eta, ckks_preset, ckks_seeded
    keys = "keys"             # node only: key folder of `secagg keygen client` (its own
                              # client-<id>.secret.json, every peer's client-*.public.json)
    client_id = 3             # node only: its protocol id (its card's id)
    state = "last-round"      # node only, optional: keeps the last round id across runs
    ledger = "ledger.json"    # node only, required with [dp]: its privacy ledger (.ledger)

    [dp]                      # optional: client-level distributed discrete Gaussian noise
    clip = 1.0                # L2 bound C of the update (the fixed point is then derived)
    noise_multiplier = 1.0    # or epsilon = 8.0 (exactly one), solved for `rounds`
    rounds = 20               # planned rounds (calibration; the server and node stop after)
    delta = 1e-5              # default 1 / num_clients^1.1 (total, clamp probability included)
    num_clients = 100         # default n: parties in the federation
    epsilon_budget = 10.0     # optional: server and node refuse a round that would exceed it
    grid_scale = 14           # fractional bits of the noise grid

Every party computes the same :class:`FederationPolicy` from the public keys of the file (the
server too: :meth:`secagg.fl_core.flower.SecAggWorkflow.from_policy`), and the node pins it as
the runtime's :class:`secagg.fl_core.runtime.policy.ClientPolicy`: each round start and CKKS key
announcement is checked by ``ClientPolicy.check_start`` / ``check_keys`` (the same code as
the ZeroMQ client), and the round's context carries the policy's digest.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from secagg.fl_core.errors import FlCoreError
from secagg.fl_core.finetune.job import FinetuneJob, JobError
from secagg.fl_core.finetune.privacy import ResolvedDp, resolve_dp
from secagg.fl_core.identity import keyfiles
from secagg.fl_core.identity.keys import Allowlist, ClientKeys, check_client_id
from secagg.fl_core.runtime.client_app import save_round_id
from secagg.fl_core.runtime.cohort import round_config_args
from secagg.fl_core.runtime.cohort_floor import check_min_cohort
from secagg.fl_core.runtime.policy import ClientPolicy, dp_policy, policy_digest, policy_document
from secagg.protocols.config import SecAggConfig
from secagg.protocols.errors import ConfigError
from secagg.sign import VerifyKey

__all__ = [
    "NODE_INSECURE_KEY",
    "NODE_POLICY_KEY",
    "DpSettings",
    "FederationPolicy",
    "NoNodePolicy",
    "NodePolicy",
    "NodePolicyError",
    "hello_payload",
    "load_last_round",
    "load_node_policy",
    "node_mode",
    "read_policy_file",
    "save_last_round",
]

NODE_POLICY_KEY: Final = "secagg-policy"
"""Node-config key: path of the node's policy file."""
NODE_INSECURE_KEY: Final = "secagg-insecure"
"""Node-config key: ``true`` lets a node without a policy trust the server (passive only)."""

_CONFIG_KEYS: Final = frozenset({
    "protocol", "n", "active", "threshold", "k", "bits", "scale", "clip", "weighted",
    "max_weight", "dropout_rate", "corruption_rate", "sigma", "eta", "ckks_preset",
    "ckks_seeded", "population"})
_PUBLIC_KEYS: Final = _CONFIG_KEYS | {"min_cohort", "dim", "dp"}
_NODE_KEYS: Final = frozenset({"keys", "client_id", "state", "ledger"})
_DP_KEYS: Final = frozenset({"clip", "noise_multiplier", "epsilon", "rounds", "delta",
                             "num_clients", "epsilon_budget", "grid_scale"})
_EXACT_PROTOCOLS: Final = ("secagg", "secagg+")
_MAX_POLICY_BYTES: Final = 1024 * 1024
_HELLO_LABEL: Final = b"secagg/flower/hello/v1\x00"


class NodePolicyError(FlCoreError, ValueError):
    """The node's policy file (or its node config) is missing, unsafe or malformed."""


class NoNodePolicy(NodePolicyError):
    """The node config names no policy file and does not opt in to ``secagg-insecure``."""


@dataclass(frozen=True)
class DpSettings:
    """The ``[dp]`` table: client-level distributed discrete Gaussian noise."""

    clip: float
    rounds: int
    noise_multiplier: float | None = None
    epsilon: float | None = None
    delta: float | None = None
    num_clients: int | None = None
    epsilon_budget: float | None = None
    grid_scale: int = 14

    def job(self, n: int) -> FinetuneJob:
        """The equivalent ``secagg run`` job (client level, distributed noise): the same
        calibration as :func:`secagg.fl_core.finetune.privacy.resolve_dp` gives that job.

        Raises:
            JobError: a value out of range.
        """
        return FinetuneJob(dp="client", noise="distributed", clip=self.clip,
                           noise_multiplier=self.noise_multiplier, epsilon=self.epsilon,
                           delta=self.delta, rounds=self.rounds, grid_scale=self.grid_scale,
                           num_clients=self.num_clients or n,
                           epsilon_budget=self.epsilon_budget)


@dataclass(frozen=True)
class FederationPolicy:
    """The public part of a policy file: identical at every node and at the server.

    ``config_args`` are the :class:`SecAggConfig` keywords of the full cohort (with DP: the
    fixed point derived from the noise, as ``secagg run`` derives it); ``dp`` the resolved
    mechanism, ``dp_settings`` the ``[dp]`` table it came from.
    """

    config_args: Mapping[str, Any]
    min_cohort: int
    dim: int | None = None
    dp: ResolvedDp | None = None
    dp_settings: DpSettings | None = None

    @property
    def base(self) -> SecAggConfig:
        """The config of the full cohort ``n``."""
        return SecAggConfig(**self.config_args)

    @property
    def n(self) -> int:
        """The largest cohort."""
        return int(self.config_args["n"])

    @property
    def active(self) -> bool:
        """Active mode (Ed25519 identities from the key folder)."""
        return bool(self.config_args.get("active", False))

    def round_config(self, m: int) -> SecAggConfig:
        """The config of a round of ``m`` clients (the rule every party derives alike).

        Raises:
            ConfigError, TypeError: no valid config for ``m``.
        """
        return SecAggConfig(**round_config_args(self.config_args, self.base, m))

    def document(self, dim: int) -> dict[str, Any]:
        """The canonical policy document for updates of ``dim`` values (the runtime's)."""
        return policy_document(config=self.base, dim=dim, min_cohort=self.min_cohort,
                               dp=None if self.dp is None else dp_policy(self.dp))

    def digest(self, dim: int) -> bytes:
        """:func:`secagg.fl_core.runtime.policy.policy_digest` of :meth:`document`."""
        return policy_digest(self.document(dim))

    def client_policy(self, dim: int, verify_keys: Mapping[int, VerifyKey] | None
                      ) -> ClientPolicy:
        """The runtime's pinned policy for updates of ``dim`` values (the pinned ``dim`` if
        the file has one: a different announced ``dim`` is then refused by the check).

        Raises:
            ValueError, ConfigError: the policy does not validate (bad sizes, missing keys).
        """
        return ClientPolicy(config_args=self.config_args, dim=self.dim or dim,
                            min_cohort=self.min_cohort, verify_keys=verify_keys,
                            dp=None if self.dp is None else dp_policy(self.dp))

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any], *, where: str = "policy") -> FederationPolicy:
        """Build from a policy document (node-only keys are ignored here).

        Raises:
            NodePolicyError: an unknown key, a missing or bad value, or a config that does
                not validate.
        """
        unknown = sorted(set(doc) - _PUBLIC_KEYS - _NODE_KEYS)
        if unknown:
            raise NodePolicyError(f"{where}: unknown keys {unknown}")
        for key in ("protocol", "n"):
            if key not in doc:
                raise NodePolicyError(f"{where}: {key!r} is required")
        args = {k: doc[k] for k in _CONFIG_KEYS if k in doc}
        if args["protocol"] != "plain":
            args.setdefault("active", True)
        dim, low = doc.get("dim"), doc.get("min_cohort", doc["n"])
        for name, value in (("dim", dim), ("min_cohort", low)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise NodePolicyError(f"{where}: {name} must be an int")
        try:
            base = SecAggConfig(**args)
            floor = 2 if base.is_secure else 1
            if not floor <= low <= base.n:
                raise ValueError(f"min_cohort must be in [{floor}, n={base.n}], got {low}")
            if dim is not None and dim < 1:
                raise ValueError(f"dim must be >= 1, got {dim}")
            # early and by name: every ClientPolicy built from this refuses it anyway
            check_min_cohort(args, low, dp="dp" in doc, flag="min_cohort")
            resolved, settings = None, None
            if "dp" in doc:
                settings = _dp_settings(doc["dp"], where)
                args, resolved = _with_dp(args, base, settings, dim, low, where)
            policy = cls(config_args=args, min_cohort=low, dim=dim, dp=resolved,
                         dp_settings=settings)
            for m in range(low, base.n + 1):  # every round size must have a valid config
                policy.round_config(m)
        except (ConfigError, TypeError, ValueError) as exc:
            if isinstance(exc, NodePolicyError):
                raise
            raise NodePolicyError(f"{where}: {exc}") from None
        return policy

    @classmethod
    def load(cls, path: str | Path) -> FederationPolicy:
        """The public part of a policy file (what the server reads).

        Raises:
            NodePolicyError: unreadable, unsafe (writable by others) or malformed.
        """
        return cls.from_mapping(read_policy_file(path), where=str(path))


def _dp_settings(raw: Any, where: str) -> DpSettings:
    if not isinstance(raw, Mapping):
        raise NodePolicyError(f"{where}: [dp] must be a table")
    unknown = sorted(set(raw) - _DP_KEYS)
    if unknown:
        raise NodePolicyError(f"{where}: unknown [dp] keys {unknown}")
    if "clip" not in raw or "rounds" not in raw:
        raise NodePolicyError(f"{where}: [dp] needs clip and rounds")
    try:
        return DpSettings(**raw)
    except TypeError as exc:
        raise NodePolicyError(f"{where}: [dp]: {exc}") from None


def _with_dp(args: dict[str, Any], base: SecAggConfig, dp: DpSettings, dim: int | None,
             low: int, where: str) -> tuple[dict[str, Any], ResolvedDp]:
    """The protocol args with the fixed point the noise needs, and the resolved mechanism
    (``secagg.fl_core.finetune.app.prepare``'s steps for secagg/secagg+, exact release)."""
    if base.protocol.value not in _EXACT_PROTOCOLS:
        raise NodePolicyError(f"{where}: DP over Flower runs over secagg or secagg+ (the "
                              "exact distributed noise of secagg run)")
    if dim is None:
        raise NodePolicyError(f"{where}: [dp] needs dim (the calibration depends on it)")
    if {"clip", "scale", "bits"} & set(args) or base.weighted:
        raise NodePolicyError(f"{where}: with [dp] the fixed point (clip, scale, bits) is "
                              "derived from the noise, and updates are unweighted")
    cohorts = tuple((m, SecAggConfig(**round_config_args(args, base, m)).threshold)
                    for m in range(low, base.n + 1))
    try:
        resolved = resolve_dp(dp.job(base.n), dim=dim, sizes=(1,), cohort=base.n,
                              threshold=base.threshold, cohorts=cohorts)
    except (JobError, ValueError) as exc:
        raise NodePolicyError(f"{where}: [dp]: {exc}") from None
    return {**args, "clip": resolved.protocol_clip, "scale": resolved.protocol_scale}, resolved


@dataclass(frozen=True)
class NodePolicy:
    """A node's whole policy: the public part, its protocol id, its keys, its state file and
    (with ``[dp]``) its privacy ledger file."""

    federation: FederationPolicy
    client_id: int
    keys: ClientKeys | None
    """Its identity (active mode), from its own key folder."""
    allowlist: Allowlist | None
    """Every peer's card from its own key folder (active mode)."""
    state_file: Path | None = None
    ledger_file: Path | None = None

    def pinned(self, dim: int) -> ClientPolicy:
        """The runtime policy a round of ``dim`` values is checked against.

        Raises:
            ValueError, ConfigError: as :meth:`FederationPolicy.client_policy`.
        """
        vks = None if self.allowlist is None else {
            cid: card.identity for cid, card in self.allowlist.items()}
        return self.federation.client_policy(dim, vks)


def read_policy_file(path: str | Path) -> dict[str, Any]:
    """The document of a policy file (TOML for ``.toml``, else JSON).

    Raises:
        NodePolicyError: missing, not a regular file, writable by group or others (a policy
            others can edit is no policy), too large, or not a TOML/JSON object.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise NodePolicyError(f"cannot open policy file {p}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise NodePolicyError(f"{p} is not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o022:
            raise NodePolicyError(f"{p} is writable by group or others; a node's policy must "
                                  "be its operator's alone (chmod go-w)")
        raw = fh.read(_MAX_POLICY_BYTES + 1)
    if len(raw) > _MAX_POLICY_BYTES:
        raise NodePolicyError(f"{p} is too large for a policy file")
    try:
        doc = tomllib.loads(raw.decode()) if p.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NodePolicyError(f"{p} is not valid {p.suffix[1:] or 'JSON'}: {exc}") from None
    if not isinstance(doc, dict):
        raise NodePolicyError(f"{p} must hold an object of settings")
    return doc


def load_node_policy(path: str | Path) -> NodePolicy:
    """Read a node's policy file and, in active mode, its key folder.

    Raises:
        NodePolicyError: the file is missing, unsafe or malformed; no ``client_id``; a
            ``[dp]`` table without ``ledger``; active mode without ``keys``, or the key folder
            has no card or secret for ``client_id``.
        KeyFileError, InsecureKeyFile, KeyBindingError: a key file is malformed or unsafe.
    """
    p = Path(path)
    doc = read_policy_file(p)
    fed = FederationPolicy.from_mapping(doc, where=str(p))
    try:
        cid = check_client_id(doc.get("client_id"))
    except (TypeError, ValueError):
        raise NodePolicyError(f"{p}: client_id (this node's protocol id, its card's id) is "
                              "required") from None
    state, ledger = doc.get("state"), doc.get("ledger")
    state_file = None if state is None else p.parent / str(state)
    if fed.dp is not None and (not isinstance(ledger, str) or not ledger):
        raise NodePolicyError(f"{p}: [dp] needs ledger (the file where this node records the "
                              "rounds it released into, before each release)")
    ledger_file = None if ledger is None else p.parent / str(ledger)
    if not fed.active:
        return NodePolicy(fed, cid, None, None, state_file, ledger_file)
    if not isinstance(doc.get("keys"), str):
        raise NodePolicyError(f"{p}: active mode needs keys (the node's key folder)")
    folder = p.parent / doc["keys"]
    try:
        allowlist = keyfiles.load_allowlist(folder)
        keys = keyfiles.load_client_keys(keyfiles.client_paths(folder, cid)[1])
    except FileNotFoundError as exc:
        raise NodePolicyError(f"{p}: key folder: {exc}") from None
    card = allowlist.get(cid)
    if card is None or card.identity != keys.identity.verify_key:
        raise NodePolicyError(f"{p}: the key folder's card of client {cid} is missing or not "
                              "this node's identity")
    return NodePolicy(fed, cid, keys, allowlist, state_file, ledger_file)


def node_mode(node_config: Mapping[str, Any]) -> Path | None:
    """The policy file this node's config names, or None when it opts in to trusting the
    server (``secagg-insecure = true``).

    Raises:
        NoNodePolicy: neither key is set (or ``secagg-insecure`` is not true).
        NodePolicyError: both are set, or the policy path is not a string.
    """
    path = node_config.get(NODE_POLICY_KEY)
    flag = node_config.get(NODE_INSECURE_KEY)
    insecure = flag is True or (isinstance(flag, str) and flag.strip().lower() == "true")
    if path is not None and insecure:
        raise NodePolicyError(f"node config sets both {NODE_POLICY_KEY} and "
                              f"{NODE_INSECURE_KEY}: pick one")
    if path is not None:
        if not isinstance(path, str) or not path:
            raise NodePolicyError(f"{NODE_POLICY_KEY} must be a file path")
        return Path(path)
    if insecure:
        return None
    raise NoNodePolicy(f"this node has no secagg policy: set node config {NODE_POLICY_KEY}="
                       f"'<policy file>' (or {NODE_INSECURE_KEY}=true to trust the server, "
                       "passive mode only: tests and trusted servers)")


def hello_payload(*, node_id: int, client_id: int, nonce: bytes) -> bytes:
    """What a node signs to tell the server which protocol id stands behind its Flower node
    id (active mode; the server checks it against the card of ``client_id``; ``nonce`` is
    the server's, fresh for each hello)."""
    return _HELLO_LABEL + struct.pack(">QI", node_id & (2**64 - 1), client_id) + nonce


def load_last_round(path: Path) -> tuple[int, float] | None:
    """The last round id in a node's state file and when it was written (None: no file)."""
    try:
        return max(0, int(path.read_text().strip())), path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise NodePolicyError(f"state file {path} is unreadable: {exc}") from None


def save_last_round(path: Path, round_id: int) -> None:
    """Write ``round_id`` to the node's state file atomically (a public number).

    Raises:
        OSError: the file cannot be written.
    """
    save_round_id(path, round_id)

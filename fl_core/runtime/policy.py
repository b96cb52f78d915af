"""The client's pinned round policy: what a client reveals is decided by its own files.

DESIGN part 6 ("who decides"): authority over a round's parameters lives with the party that
bears the risk. A :class:`ClientPolicy` is built from the client's own configuration (the
``secagg client`` flags or ``--config`` TOML for the synthetic federation; the ``--job`` file
for fine-tuning, through :func:`secagg.fl_core.finetune.app.prepare`) and its own key folder
(the peers' verify keys: the client cards ``secagg keygen`` wrote). It pins:

- the protocol config for the full cohort ``n`` (protocol, active mode, the inputs of the
  ``k``/``t`` rule or an explicit threshold, fixed point: bits, scale, clip); a round of ``m``
  clients must carry exactly the config the client derives itself for ``m``
  (:func:`secagg.fl_core.runtime.cohort.round_config_args`, the server's own rule);
- the cohort size: at least ``min_cohort`` (``--min-clients``; default ``n``), at most ``n``,
  and ``min_cohort`` never below the cohort floor (:mod:`secagg.fl_core.runtime.cohort_floor`:
  with distributed DP noise, no round with fewer noise shares at its threshold than ``n``'s);
- ``dim``, and the DP mechanism of a fine-tuning job (placement, unit, noise multiplier,
  sampling rate, grid), which is what the client's own noise share is calibrated to;
- in active mode, the verify key of every peer (from the client's key folder, never from
  the server alone).

On every round start and CKKS ``keys`` message the client checks the server's values against
its own before any secret is touched (:meth:`ClientPolicy.check_start`,
:meth:`ClientPolicy.check_keys`); a difference raises :class:`PolicyMismatch` naming the field,
and the client sits the round out. The context it then builds is made of *its own* values,
and the digest of its policy (:attr:`ClientPolicy.digest`) goes into the round context
(:class:`secagg.protocols.context.RoundContext` ``policy_digest``), which salts every key
agreement and labels every mask and signature: two parties with different policies can never
complete a round together, even where a field check were missed.

Round ids (grinding). The SecAgg+ graph seed is a digest of the round context, so a server free
to pick the round id could try many ids offline and keep one whose graph surrounds a victim
with its sybils. :class:`RoundClock` makes ids a rate-limited resource: after the first id a
client sees (or the one its ``--state`` file recorded), it accepts an id ``R`` only if
``R - last <= round_burst + elapsed / min_round_interval_s``. An honest server steps ids by one
per round (aborted rounds and ids reserved before a crash consume ids, hence the burst); a
server that wants ``2^j`` candidate ids for a client's round must first keep that client out of
rounds for about ``2^j * min_round_interval_s`` seconds. What remains is documented in
docs/threat-model.md (the cohort choice, ``log2 C(N, n)`` bits, and the first id a fresh
client sees).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secagg.fl_core.errors import FlCoreError, PolicyRequired
from secagg.fl_core.runtime.cohort import population_args, round_config_args
from secagg.fl_core.runtime.cohort_floor import check_min_cohort, distributed_dp
from secagg.protocols.config import ProtocolKind, SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import ConfigError
from secagg.sign import VerifyKey

if TYPE_CHECKING:
    from secagg.fl_core.finetune.privacy import ResolvedDp
    from secagg.fl_core.runtime.rounds import RoundStart

__all__ = [
    "ClientPolicy",
    "PolicyMismatch",
    "PolicyRequired",
    "RoundClock",
    "dp_policy",
    "policy_digest",
    "policy_document",
]

log = logging.getLogger("secagg.fl_core.runtime.policy")

_DIGEST_TAG = b"secagg/client-policy/v1"
# The order fields are compared (and named) in: what decides secrecy first.
_FIRST = ("protocol", "active", "n", "threshold", "k", "corruption_rate", "dropout_rate",
          "sigma", "eta", "bits", "scale", "clip")


class PolicyMismatch(FlCoreError, ValueError):
    """A value the server sent differs from what the client's own policy derives; ``field``
    names it (a config field, ``"cohort"``, ``"dim"``, ``"verify_keys"``, ``"round_id"``,
    ``"policy.<key>"`` ...). The client does not take part in that round."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def dp_policy(dp: ResolvedDp) -> dict[str, Any] | None:
    """The public DP part of a fine-tuning job's policy (None when DP is off): what the
    client's noise share is calibrated to."""
    cfg = dp.config
    if cfg is None:
        return None
    return {"unit": cfg.unit.value, "placement": cfg.placement.value,
            "noise_multiplier": cfg.noise_multiplier, "clip": cfg.clip, "delta": cfg.delta,
            "sample_rate": cfg.sample_rate, "threshold": cfg.threshold,
            "grid_scale": cfg.grid_scale, "steps_per_round": dp.steps_per_round}


def policy_document(*, config: SecAggConfig, dim: int, min_cohort: int,
                    dp: Mapping[str, Any] | None) -> dict[str, Any]:
    """The canonical public policy of a federation (client and server compute it alike)."""
    return {"version": 1, "config": config.digest.hex(), "protocol": config.protocol.value,
            "active": config.active, "max_cohort": config.n, "min_cohort": min_cohort,
            "dim": dim, "dp": None if dp is None else dict(dp)}


def policy_digest(doc: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of a policy document (bound into every round context)."""
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(_DIGEST_TAG + body).digest()


def _norm(name: str, value: Any) -> Any:
    if name == "protocol":
        return ProtocolKind(value).value
    if isinstance(value, ProtocolKind):
        return value.value
    return value


def _compare_configs(got: SecAggConfig, want: SecAggConfig) -> None:
    names = [f.name for f in fields(SecAggConfig)]
    for name in [*_FIRST, *(n for n in names if n not in _FIRST)]:
        if getattr(got, name) != getattr(want, name):
            raise PolicyMismatch(name, f"the server says {_norm(name, getattr(got, name))!r}, "
                                 f"my policy says {_norm(name, getattr(want, name))!r}")
    if got.to_bytes() != want.to_bytes():  # catch-all: every field is in the encoding
        raise PolicyMismatch("config", "the server's config encodes differently from mine")


@dataclass(frozen=True)
class ClientPolicy:
    """What a client pins for every round (see the module docstring).

    ``config_args``: the :class:`SecAggConfig` keywords for the full cohort (``n`` included),
    derived from the client's own flags or job; ``min_cohort``: the smallest cohort it takes
    part in (default ``n``; never below the cohort floor,
    :mod:`secagg.fl_core.runtime.cohort_floor`); ``verify_keys``: every peer's Ed25519 key from
    its own key folder (active mode; :meth:`from_key_folder` reads them); ``dp``:
    :func:`dp_policy` of its job. Raises ``ConfigError``/``TypeError`` (a config that does not
    validate), :class:`secagg.fl_core.runtime.cohort_floor.CohortFloorError` (``min_cohort``
    below the floor) or ``ValueError`` (bad sizes, missing keys).
    """

    config_args: Mapping[str, Any]
    dim: int
    min_cohort: int | None = None
    verify_keys: Mapping[int, VerifyKey] | None = None
    dp: Mapping[str, Any] | None = None
    round_burst: int = 4
    min_round_interval_s: float = 0.02
    base: SecAggConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        base = SecAggConfig(**self.config_args)
        object.__setattr__(self, "config_args", dict(self.config_args))
        object.__setattr__(self, "base", base)
        floor = 1 if base.protocol is ProtocolKind.PLAIN else 2
        if self.min_cohort is None:
            object.__setattr__(self, "min_cohort", base.n)
        assert self.min_cohort is not None
        if not floor <= self.min_cohort <= base.n:
            raise ValueError(f"min_cohort must be in [{floor}, n={base.n}], got "
                             f"{self.min_cohort}")
        # a server that picks the cohort keeps its sybils in the smallest one we accept
        check_min_cohort(self.config_args, self.min_cohort, dp=distributed_dp(self.dp),
                         flag="min_cohort (--min-clients)")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {self.dim!r}")
        if base.active and not self.verify_keys:
            raise ValueError("active mode: the policy needs the peers' verify keys (the client "
                             "cards of the key folder)")
        if self.verify_keys is not None and not base.active:
            object.__setattr__(self, "verify_keys", None)  # passive: no keys are used
        if self.round_burst < 1 or not self.min_round_interval_s > 0:
            raise ValueError("round_burst must be >= 1 and min_round_interval_s > 0")

    @classmethod
    def from_key_folder(cls, config_args: Mapping[str, Any], *, dim: int, keys: str | Path,
                        min_cohort: int | None = None, dp: Mapping[str, Any] | None = None
                        ) -> ClientPolicy:
        """A client's policy from its own files: ``config_args`` from its configuration (or
        job), and in active mode every peer's verify key from the client cards
        (``client-<id>.public.json``) of its key folder ``keys`` (what ``secagg keygen``
        wrote; ``secagg client`` builds its policy this way).

        Raises:
            OSError / KeyFileError / KeyBindingError: the key folder cannot be read (active).
            ConfigError / TypeError / ValueError / CohortFloorError: as the constructor.
        """
        from secagg.fl_core.identity.keyfiles import load_allowlist

        vks = None
        if config_args.get("active", False):
            vks = {cid: card.identity for cid, card in load_allowlist(keys).items()}
            config_args = population_args(config_args, len(vks))
        return cls(config_args=config_args, dim=dim, min_cohort=min_cohort, verify_keys=vks,
                   dp=dp)

    @property
    def document(self) -> dict[str, Any]:
        """The canonical policy document (:func:`policy_document`)."""
        assert self.min_cohort is not None
        return policy_document(config=self.base, dim=self.dim, min_cohort=self.min_cohort,
                               dp=self.dp)

    @property
    def digest(self) -> bytes:
        """:func:`policy_digest` of :attr:`document`: bound into every round context."""
        return policy_digest(self.document)

    def expected_config(self, n: int) -> SecAggConfig:
        """The config the client itself derives for a cohort of ``n`` (the server's rule).

        Raises:
            ConfigError: the pinned config does not validate at this ``n``.
        """
        if n == self.base.n:
            return self.base
        try:
            return SecAggConfig(**round_config_args(self.config_args, self.base, n))
        except TypeError as exc:
            raise ConfigError(str(exc)) from None

    # -- the checks ------------------------------------------------------------------------

    def check_cohort(self, clients: tuple[int, ...], client_id: int) -> None:
        """Raises PolicyMismatch (``cohort``): size outside ``[min_cohort, n]``, repeated ids,
        or this client not in it."""
        assert self.min_cohort is not None
        if len(set(clients)) != len(clients):
            raise PolicyMismatch("cohort", "repeated client ids")
        if not self.min_cohort <= len(clients) <= self.base.n:
            raise PolicyMismatch("cohort", f"{len(clients)} clients; my policy takes part in "
                                 f"cohorts of {self.min_cohort} to {self.base.n}")
        if client_id not in clients:
            raise PolicyMismatch("cohort", f"client {client_id} is not in the cohort")

    def check_config(self, sent: Mapping[str, Any], n: int) -> SecAggConfig:
        """The client's own config for ``n`` clients, after checking the server's arguments
        ``sent`` against it key by key and resolved field by field.

        Raises:
            PolicyMismatch: named after the first field that differs (``config`` when the
                server's arguments do not even make a config).
        """
        try:
            want = self.expected_config(n)
        except ConfigError as exc:
            raise PolicyMismatch("cohort", f"my policy has no valid config for {n} clients: "
                                 f"{exc}") from None
        names = {f.name for f in fields(SecAggConfig)}
        for key in [*(k for k in _FIRST if k in sent), *sorted(k for k in sent
                                                            if k not in _FIRST)]:
            value = sent[key]
            if key in names and value is not None:
                try:
                    same = _norm(key, value) == _norm(key, getattr(want, key))
                except ValueError:
                    same = False
                if not same:
                    raise PolicyMismatch(key, f"the server says {value!r}, my policy says "
                                         f"{_norm(key, getattr(want, key))!r}")
        try:
            got = SecAggConfig(**sent)
        except (ConfigError, TypeError, ValueError) as exc:
            raise PolicyMismatch("config", f"the server's config does not validate: {exc}"
                                 ) from None
        _compare_configs(got, want)
        return want

    def check_verify_keys(self, sent: Mapping[int, bytes] | None,
                          ids: tuple[int, ...]) -> dict[int, VerifyKey] | None:
        """The peers' verify keys from the client's own key folder, after checking the
        server's list against them (passive: the server must send none).

        Raises:
            PolicyMismatch (``verify_keys``): naming the client whose key is missing or differs.
        """
        if not self.base.active:
            if sent:
                raise PolicyMismatch("verify_keys", "verify keys sent in passive mode")
            return None
        assert self.verify_keys is not None
        if sent is None:
            raise PolicyMismatch("verify_keys", "active mode, but the server sent none")
        if set(sent) != set(ids):
            raise PolicyMismatch("verify_keys", "not exactly one key per cohort member")
        own: dict[int, VerifyKey] = {}
        for cid in ids:
            mine = self.verify_keys.get(cid)
            if mine is None:
                raise PolicyMismatch("verify_keys", f"client {cid} has no card in my key folder")
            if mine.to_bytes() != bytes(sent[cid]):
                raise PolicyMismatch("verify_keys", f"the server's key for client {cid} is not "
                                     "the one in my key folder")
            own[cid] = mine
        return own

    def check_document(self, sent: Mapping[str, Any] | None) -> None:
        """Compare the server's policy document with the client's own (absent: the digest in
        the context still binds it). Raises PolicyMismatch (``policy.<key>``)."""
        if sent is None:
            return
        mine = self.document
        for key in sorted(set(mine) | set(sent)):
            if sent.get(key) != mine.get(key):
                raise PolicyMismatch(f"policy.{key}", f"the server's policy says "
                                     f"{sent.get(key)!r}, mine says {mine.get(key)!r}")

    def check_start(self, start: RoundStart, client_id: int) -> RoundContext:
        """Check a round start against the policy; return the round's context built from the
        client's own values (config, dim, verify keys, policy digest).

        Raises:
            PolicyMismatch: the first field that differs, by name.
        """
        self.check_cohort(start.clients, client_id)
        config = self.check_config(start.config, len(start.clients))
        if start.dim != self.dim:
            raise PolicyMismatch("dim", f"the server says {start.dim}, my policy says "
                                 f"{self.dim}")
        vks = self.check_verify_keys(start.verify_keys, start.clients)
        self.check_document(start.policy)
        try:
            return RoundContext(config=config, round_id=start.round_id, dim=self.dim,
                                client_ids=start.clients, verify_keys=vks,
                                ckks_fingerprint=start.ckks_fingerprint,
                                policy_digest=self.digest)
        except (ConfigError, TypeError) as exc:
            raise PolicyMismatch("context", str(exc)) from None

    def check_keys(self, head: Mapping[str, Any], client_id: int) -> EpochContext:
        """Check a CKKS ``keys`` announcement; return the epoch context built from the
        client's own config and verify keys.

        Raises:
            PolicyMismatch: the first field that differs, by name.
        """
        try:
            members = tuple(int(c) for c in head["members"])
            sent = head["config"]
            raw = head.get("verify_keys")
            vks_sent = None if raw is None else {
                int(c): bytes.fromhex(k) for c, k in raw.items()}
            epoch = int(head["epoch"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PolicyMismatch("keys", f"malformed key setup announcement: {exc}") from None
        if not isinstance(sent, dict):
            raise PolicyMismatch("config", "not an object")
        if len(set(members)) != len(members) or client_id not in members:
            raise PolicyMismatch("cohort", f"client {client_id} is not a member, or ids repeat")
        assert self.min_cohort is not None
        if len(members) < self.min_cohort:
            raise PolicyMismatch("cohort", f"{len(members)} members; my policy needs at least "
                                 f"{self.min_cohort}")
        config = self.check_config(sent, self.base.n)
        vks = self.check_verify_keys(vks_sent, members)
        try:
            return EpochContext(config=config, epoch=epoch, client_ids=members,
                                verify_keys=vks)
        except (ConfigError, TypeError) as exc:
            raise PolicyMismatch("context", str(exc)) from None


@dataclass
class RoundClock:
    """Rate limit on round ids (see the module docstring): ``R - last <= burst + elapsed /
    interval_s``. ``last`` is None until the first id (trust on first use)."""

    burst: int
    interval_s: float
    last: int | None = None
    last_time: float = 0.0

    def check(self, round_id: int, now: float) -> None:
        """Raises PolicyMismatch (``round_id``): an id older than the last, or too far ahead."""
        if self.last is None:
            return
        if round_id < self.last:
            raise PolicyMismatch("round_id", f"{round_id} is older than {self.last}")
        allowed = self.burst + math.floor(max(0.0, now - self.last_time) / self.interval_s)
        if round_id - self.last > allowed:
            raise PolicyMismatch("round_id", f"{round_id} skips ahead of {self.last} by "
                                 f"{round_id - self.last} (at most {allowed} now: round ids are "
                                 "not the server's to grind)")

    def advance(self, round_id: int, now: float) -> None:
        """Record ``round_id`` as seen at ``now`` (never moves back)."""
        if self.last is None or round_id > self.last:
            self.last, self.last_time = round_id, now


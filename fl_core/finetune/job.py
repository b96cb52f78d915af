"""The description of one federated fine-tuning job, shared by the server and every client.

Every party builds the same model, adapter and data split from a :class:`FinetuneJob` (``secagg
run`` writes it once as JSON and hands the file to each process; ``secagg serve`` and ``secagg
client`` on other hosts take the same file with ``--job``). All choices are public: a party's
private data is its own partition, never the job.

Privacy (``dp``): ``"record"`` protects each training example, ``"client"`` a party's whole data,
``"none"`` turns DP off (plain secure FedAvg). ``noise``: ``"distributed"`` (each party adds a
share of the noise; the secure sum carries the full ``sigma * C``) or ``"local"`` (each party adds
the full noise itself: DP-LoRA). The noise multiplier is either given or solved from ``epsilon``
for the planned number of rounds (:func:`secagg.fl_core.finetune.privacy.resolve_dp`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from secagg.fl_core.finetune.server_opt import SERVER_OPTIMIZERS

__all__ = ["OBJECTIVES", "FinetuneJob", "JobError"]

#: What a job trains for (``--objective``).
OBJECTIVES = ("finetune", "pretrain", "distill")

DpUnitName = Literal["record", "client", "none"]
NoiseName = Literal["distributed", "local"]


class JobError(ValueError):
    """A job description is malformed or self-contradictory."""


@dataclass(frozen=True)
class FinetuneJob:
    """What is trained, on what, for how long, with which privacy.

    Attributes (the ``secagg run`` flag of the same name sets each):
        model: ``"minilm"``, ``"smollm2"``, a local Hugging Face folder or a GGUF path.
        data: a packaged data set name (``secagg.models.PACKAGED_DATASETS``) or a CSV/JSONL path.
        adapter: ``"lora"``, ``"prefix"``, ``"prompt"`` or ``"full"``.
        num_clients: parties holding data (ids 1..num_clients); the cohort is ``n``.
        partition: ``"iid"`` or ``"dirichlet"`` (label skew with ``alpha``).
        rounds: planned rounds (the accountant and ``epsilon`` solve for these).
        lr: the server's step on the noised mean gradient (record-level distributed DP) or the
            clients' local rate.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9 on the server) for the step on the
            noised gradient: the server's step (distributed noise) or the clients' local DP-SGD
            (local noise).
        server_lr: the server's step on the mean update (other modes): FedAvg's scale, or the
            rate of ``server_optimizer``.
        server_optimizer: ``"avg"`` (FedAvg, the default), ``"avgm"`` (FedAvgM: momentum
            ``server_momentum`` on the mean update) or ``"adam"`` (FedAdam, Reddi et al. 2021:
            beta1 ``server_momentum``): the server's optimizer on the mean update in the modes
            that carry updates (no DP, client level, local DP with several local steps); see
            :mod:`secagg.fl_core.finetune.server_opt`. A job whose server steps on gradients
            (record level, distributed noise or one local step) refuses anything but ``"avg"``.
        server_momentum: FedAvgM's momentum and FedAdam's beta1, in [0, 1) (default 0.9).
        local_optimizer: ``"adamw"`` (default: a fresh AdamW every round) or ``"sgd"`` (plain
            SGD at ``lr``) for the clients' non-private local training (no DP, client level).
        records_per_round: expected records sampled per round over all parties (record level:
            the Poisson rate is this over the total number of records).
        local_steps / batch_size: local training per round (local DP-SGD, client level, none).
        clip: the L2 bound C (per record or per client update).
        epsilon / noise_multiplier: give one (DP on); ``delta`` defaults to 1/N^1.1 (the total
            delta, the fixed-point clamp probability included).
        epsilon_budget: stop before a round that would spend more.
        grid_scale: fractional bits of the integer grid the distributed noise lives on.
        client_sample_rate: client level only: each client flips its own CSPRNG coin with this
            rate every round and, when it loses, contributes a zero update (still training and
            still adding its noise share, so neither the sum's noise nor its timing tells the
            server). Only then is client-level DP amplified by sampling (rate this value); left
            unset, the server picks the cohort and the accountant claims no amplification.
        objective: ``"finetune"`` (the default: the labelled or instruction task of ``data``),
            ``"pretrain"`` (continued pre-training: the causal-LM loss on the parties' unlabeled
            text; full weights travel in chunks of ``chunk_size`` values,
            :mod:`secagg.fl_core.finetune.pretrain`) or ``"distill"`` (parties send soft labels
            on a public transfer set of ``transfer_size`` examples and the server distils them
            into a student, :mod:`secagg.fl_core.finetune.distill`).
        continual: the resolved stage schedule of a continual-learning job
            (:mod:`secagg.fl_core.finetune.continual`), or None; ``rounds`` is then the sum of
            the stages' rounds and one accountant covers them all.
        replay_buffer: continual learning: records of every earlier stage each party keeps in a
            local replay buffer and mixes into later stages (0: no mitigation).
        chunk_size: values per secure-aggregation round when full weights are streamed.
        transfer_size: distillation: examples of the public transfer set.
        distill_steps: distillation: KL steps per round toward the consensus (every party and
            the server's student); ``secagg run --objective distill`` defaults ``noise`` to
            ``"local"``, its only DP mode.

    Raises:
        JobError: on nonsense values (checked when built).
    """

    model: str = "minilm"
    data: str = "trec"
    adapter: str = "lora"
    num_clients: int = 4
    partition: str = "dirichlet"
    alpha: float = 0.5
    rounds: int = 20
    seed: int = 0
    test_fraction: float = 0.1
    eval_size: int = 500
    max_length: int = 32
    lr: float = 0.02
    server_lr: float = 1.0
    optimizer: str = "adam"
    records_per_round: int = 512
    local_steps: int = 1
    batch_size: int = 16
    dp: DpUnitName = "record"
    noise: NoiseName = "distributed"
    clip: float = 1.0
    epsilon: float | None = 8.0
    noise_multiplier: float | None = None
    delta: float | None = None
    epsilon_budget: float | None = None
    grid_scale: int = 14
    generations: int = 3
    client_sample_rate: float | None = None
    server_optimizer: str = "avg"
    server_momentum: float = 0.9
    local_optimizer: str = "adamw"
    objective: str = "finetune"
    continual: dict[str, Any] | None = None
    replay_buffer: int = 0
    chunk_size: int = 4_194_304
    transfer_size: int = 1000
    distill_steps: int = 40

    def __post_init__(self) -> None:
        _check_choice("adapter", self.adapter, ("lora", "prefix", "prompt", "full"))
        _check_choice("partition", self.partition, ("iid", "dirichlet"))
        _check_choice("dp", self.dp, ("record", "client", "none"))
        _check_choice("noise", self.noise, ("distributed", "local"))
        _check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        _check_choice("objective", self.objective, OBJECTIVES)
        self._check_update_optimizers()
        for name in ("num_clients", "rounds", "eval_size", "max_length", "records_per_round",
                     "local_steps", "batch_size", "grid_scale", "chunk_size", "transfer_size",
                     "distill_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise JobError(f"{name} must be a positive int, got {value!r}")
        for name in ("alpha", "lr", "server_lr", "clip"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise JobError(f"{name} must be a positive number, got {value!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise JobError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.dp != "none" and (self.epsilon is None) == (self.noise_multiplier is None):
            raise JobError("with DP on give exactly one of epsilon and noise_multiplier")
        for name in ("epsilon", "noise_multiplier", "epsilon_budget"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise JobError(f"{name} must be > 0, got {value!r}")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise JobError(f"delta must be in (0, 1), got {self.delta}")
        if self.client_sample_rate is not None:
            rate = self.client_sample_rate
            if self.dp != "client":
                raise JobError("client_sample_rate applies to dp='client' only")
            if not (isinstance(rate, int | float) and not isinstance(rate, bool)
                    and 0.0 < rate <= 1.0):
                raise JobError(f"client_sample_rate must be in (0, 1], got {rate!r}")
        if not isinstance(self.generations, int) or self.generations < 0:
            raise JobError("generations must be an int >= 0")
        buffer = self.replay_buffer
        if not isinstance(buffer, int) or isinstance(buffer, bool) or buffer < 0:
            raise JobError(f"replay_buffer must be an int >= 0, got {buffer!r}")
        if buffer and self.continual is None:
            raise JobError("--replay-buffer applies to a continual job (--continual)")
        if self.continual is not None:
            if self.objective != "finetune":
                raise JobError("continual learning runs the fine-tuning objective")
            if not isinstance(self.continual, dict):
                raise JobError("continual must be a resolved schedule (a JSON object)")

    @property
    def steps_on_gradients(self) -> bool:
        """Whether the round's sum is of (noised) gradients, stepped by ``optimizer`` on the
        server (record level with distributed noise, or local noise and one local step),
        rather than of updates stepped by ``server_optimizer``."""
        return self.dp == "record" and (self.noise == "distributed" or self.local_steps == 1)

    def _check_update_optimizers(self) -> None:
        _check_choice("server_optimizer", self.server_optimizer, SERVER_OPTIMIZERS)
        _check_choice("local_optimizer", self.local_optimizer, ("adamw", "sgd"))
        beta = self.server_momentum
        if not (isinstance(beta, int | float) and not isinstance(beta, bool)
                and 0.0 <= beta < 1.0):
            raise JobError(f"server_momentum must be in [0, 1), got {beta!r}")
        if self.server_optimizer != "avg" and self.steps_on_gradients:
            raise JobError("server_optimizer applies to jobs that carry updates (dp 'none' or "
                           "'client', or local noise with local_steps > 1); this job's server "
                           "steps on gradients with optimizer "
                           f"{self.optimizer!r}")
        if self.local_optimizer != "adamw" and self.dp == "record":
            raise JobError("local_optimizer applies to non-private local training (dp 'none' "
                           "or 'client'); record-level local DP-SGD uses optimizer")

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON: parties compare it before round 1."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        """Canonical JSON (sorted keys); a field added later is left out while it holds its
        default (an unset ``client_sample_rate``, FedAvg, AdamW), so jobs written before that
        field existed keep their digest (and their checkpoints)."""
        doc = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if doc[name] == default:
                del doc[name]
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FinetuneJob:
        """Build from a mapping with known keys only.

        Raises:
            JobError: an unknown key or a bad value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise JobError(f"unknown job keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**doc)
        except TypeError as exc:
            raise JobError(str(exc)) from None

    @classmethod
    def load(cls, path: str | Path) -> FinetuneJob:
        """Read a job file.

        Raises:
            JobError: unreadable, not JSON, or invalid.
        """
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise JobError(f"cannot read job file {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise JobError(f"job file {path} must hold a JSON object")
        return cls.from_dict(doc)

    def save(self, path: str | Path) -> None:
        """Write the canonical JSON to ``path``."""
        Path(path).write_text(self.to_json() + "\n")


#: Fields added after the first release, with the default at which ``to_json`` leaves them out
#: (the behaviour of jobs written before they existed).
_LATER_FIELDS: dict[str, Any] = {"client_sample_rate": None, "server_optimizer": "avg",
                                 "server_momentum": 0.9, "local_optimizer": "adamw",
                                 "objective": "finetune", "continual": None, "replay_buffer": 0,
                                 "chunk_size": 4_194_304, "transfer_size": 1000,
                                 "distill_steps": 40}


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise JobError(f"{name} must be one of {allowed}, got {value!r}")

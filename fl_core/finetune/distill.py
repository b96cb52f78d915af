"""Federated knowledge distillation (``--objective distill``, FedMD-style): what every party
builds, and the client side.

Instead of model weights the parties send *soft labels* on a public transfer set: ``T =
transfer_size`` texts drawn from the training split (every party and the server hold the
texts; their labels are never used). The aggregated vector is the ``T x K`` matrix of class
probabilities (``K`` classes) flattened, so a round costs ``T * K`` values whatever the model's
size. The server's broadcast state IS the consensus (the mean of the last round's soft labels;
uniform ``1/K`` before round 1), and the server distils it into its own student
(:mod:`secagg.fl_core.finetune.distill_server`).

Each party keeps its own model (the job's model and adapter, initialised from the job seed)
alive across rounds in its process. Every round it (1) distils toward the broadcast consensus on
the transfer set (unless it is the uniform start), (2) runs ``local_steps`` DP-SGD steps on its
private records (record level, local noise: the full ``sigma * C`` itself, Poisson rate ``q``;
its Adam state persists across rounds as a single-party DP-SGD run's would), (3) sends its
softmax probabilities on the transfer set, values in ``[0, 1]`` (the protocol's range, clip 1).

Privacy: a party's model depends on its records only through its DP-SGD steps (adaptive
composition of subsampled Gaussian steps, the same accountant as DP-LoRA with ``local_steps``
steps a round); the consensus it distils toward and the public texts are post-processing of
DP outputs and public data, and what it sends is a function of its model: post-processing.
The parties' records are disjoint, so the record-level epsilon of everything released is that
one accountant's. Distributed noise is refused: noise shares on soft labels would need the
per-record sensitivity of a party's soft labels, which is unbounded (one record can move the
trained model, hence every one of the ``T * K`` probabilities, arbitrarily);
:func:`secagg.fl_core.finetune.preflight.check_distill` says so before any process starts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from secagg.fl_core.dp import NoiseSource
from secagg.fl_core.finetune.app import Prepared
from secagg.fl_core.finetune.job import FinetuneJob, JobError
from secagg.fl_core.finetune.ledger import PrivacyLedger
from secagg.fl_core.finetune.party import JobData, build_job_model, load_job_data
from secagg.fl_core.finetune.preflight import check_distill, check_protocol
from secagg.fl_core.finetune.privacy import ResolvedDp, resolve_dp
from secagg.models import AdaptedModel, ClassificationData, Dataset, TrainConfig, train_local
from secagg.models.device import resolve_device
from secagg.models.dp_grad import clipped_grad_sum, poisson_indices, trainables
from secagg.models.partition import dirichlet_partition, iid_partition
from secagg.protocols.config import SecAggConfig

__all__ = ["DISTILL_SCALE", "DistillClientTask", "DistillData", "distill_into",
           "load_distill_data", "prepare_distill", "soft_labels"]

Vector = npt.NDArray[np.float64]
#: fractional bits of the soft labels on the wire (quantisation step 1.5e-5 per probability)
DISTILL_SCALE = 16
_TRANSFER_TAG = 0x7D15  # separates the transfer draw's generator from the job's other seeds
_MIN_RECORDS_PER_PARTY = 2
_LOCAL_OPTIMIZER: dict[str, Literal["adamw", "sgd"]] = {"adamw": "adamw", "sgd": "sgd"}


@dataclass(frozen=True)
class DistillData(JobData):
    """The finetune split (``train``, ``test``, ``parts``) with ``transfer_size`` training
    examples set aside as the public transfer set: ``transfer_texts`` (what parties and server
    use), ``transfer_indices`` (into ``train``; diagnostics only: their labels never enter
    training). The parties' ``parts`` partition the rest of ``train``."""

    transfer_texts: tuple[str, ...]
    transfer_indices: npt.NDArray[np.int64]


def load_distill_data(job: FinetuneJob) -> DistillData:
    """The held-out set as for fine-tuning, a seeded transfer set drawn from the training
    split, and the job's IID or Dirichlet partition of the rest (all from ``job.seed``).

    Raises:
        JobError: not classification data, or the transfer set leaves fewer than 2 records
            per party; and what :func:`load_job_data` raises.
    """
    base = load_job_data(job)
    train = base.train
    if not isinstance(train, ClassificationData):
        raise JobError("--objective distill needs classification data (soft labels over "
                       f"classes); {job.data!r} is instruction data")
    rest_size = len(train) - job.transfer_size
    if rest_size < _MIN_RECORDS_PER_PARTY * job.num_clients:
        raise JobError(f"--transfer-size {job.transfer_size} leaves {max(rest_size, 0)} of "
                       f"{len(train)} training examples for {job.num_clients} parties; lower it")
    order = np.random.default_rng([job.seed, _TRANSFER_TAG]).permutation(len(train))
    transfer = np.sort(order[:job.transfer_size]).astype(np.int64)
    rest = np.sort(order[job.transfer_size:]).astype(np.int64)
    if job.partition == "iid":
        parts = iid_partition(len(rest), num_clients=job.num_clients, seed=job.seed)
    else:
        parts = dirichlet_partition(train.labels[rest], num_clients=job.num_clients,
                                    alpha=job.alpha, seed=job.seed)
    return DistillData(train, base.test,
                       tuple(rest[np.asarray(p, dtype=np.int64)] for p in parts),
                       tuple(train.texts[i] for i in transfer), transfer)


def prepare_distill(job: FinetuneJob, *, protocol: str, n: int, active: bool) -> Prepared:
    """:func:`secagg.fl_core.finetune.app.prepare` for a distillation job: the round's vector
    is ``transfer_size * K`` soft labels in ``[0, 1]`` (clip 1, :data:`DISTILL_SCALE` bits).

    Raises:
        JobError: a DP mode distillation cannot run (see :func:`check_distill`), a protocol
            the job cannot run over, too large a transfer set, non-classification data.
        ConfigError: the protocol config does not validate.
    """
    check_protocol(job, protocol)
    check_distill(job)
    data = load_distill_data(job)
    model = build_job_model(job, data)
    dim = len(data.transfer_texts) * int(model.num_labels or 0)
    base: dict[str, Any] = {"protocol": protocol, "n": n}
    if protocol != "plain":
        base["active"] = active
    threshold = SecAggConfig(**base).threshold
    dp = resolve_dp(job, dim=dim, sizes=data.sizes, cohort=n, threshold=threshold)
    # local noise only: clamping an already private value to the range is post-processing
    dp = replace(dp, protocol_clip=1.0, protocol_scale=DISTILL_SCALE)
    args = {**base, "clip": 1.0, "scale": DISTILL_SCALE}
    if protocol != "plain":
        args["threshold"] = threshold
    SecAggConfig(**args)  # validate now, with a clear error, rather than in round 1
    return Prepared(job, data, model, dp, args, round_dim=dim)


# -- the model on the transfer set -----------------------------------------------------------


def _encode(model: AdaptedModel, texts: list[str], max_length: int, dev: torch.device
            ) -> dict[str, torch.Tensor]:
    enc = model.tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(dev), "attention_mask": enc["attention_mask"].to(dev)}


@torch.no_grad()
def soft_labels(model: AdaptedModel, texts: tuple[str, ...], *, max_length: int,
                batch_size: int = 64) -> npt.NDArray[np.float64]:
    """The model's class probabilities on ``texts``: shape ``(len(texts), K)``, rows sum to 1."""
    dev = resolve_device(None)
    net = model.model.to(dev)
    net.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # batches of similar length
    probs = np.zeros((len(texts), int(model.num_labels or 0)))
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        batch = _encode(model, [texts[i] for i in idx], max_length, dev)
        probs[idx] = F.softmax(net(**batch).logits.float(), dim=-1).cpu().numpy()
    return probs


def distill_into(model: AdaptedModel, texts: tuple[str, ...],
                 targets: npt.NDArray[np.floating[Any]], *, steps: int, batch_size: int,
                 lr: float, max_length: int, seed: int) -> list[float]:
    """``steps`` AdamW steps (fresh optimizer, rate ``lr``) of ``KL(targets || model)`` on
    batches of ``texts`` (a seeded walk through permutations); return the losses.

    Raises:
        ValueError: ``targets`` is not ``(len(texts), K)``.
    """
    k = int(model.num_labels or 0)
    if targets.shape != (len(texts), k):
        raise ValueError(f"targets must have shape ({len(texts)}, {k}), got {targets.shape}")
    dev = resolve_device(None)
    net = model.model.to(dev)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    target = torch.as_tensor(np.asarray(targets), dtype=torch.float32, device=dev)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    net.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout under the (public) seed
        for _ in range(steps):
            while len(order) < batch_size:
                order.extend(torch.randperm(len(texts), generator=gen).tolist())
            idx, order = order[:batch_size], order[batch_size:]
            logits = net(**_encode(model, [texts[i] for i in idx], max_length, dev)).logits
            loss = F.kl_div(F.log_softmax(logits.float(), dim=-1), target[idx],
                            reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            losses.append(float(loss.detach()))
    net.eval()
    return losses


# -- the client ------------------------------------------------------------------------------


class DistillClientTask:
    """``update(round_id, consensus) -> soft labels`` for one party (its model persists).

    Raises (when called):
        ValueError: the broadcast state is not ``transfer_size * K`` long.
        BudgetExhausted: this party's privacy ledger refuses the round
            (:mod:`secagg.fl_core.finetune.ledger`; default: a ledger in memory).
    """

    def __init__(self, job: FinetuneJob, client_id: int, model: AdaptedModel, data: Dataset,
                 transfer_texts: tuple[str, ...], dp: ResolvedDp, *,
                 stats_path: Path | None = None, ledger: PrivacyLedger | None = None) -> None:
        self.job, self.client_id, self.model, self.data, self.dp = job, client_id, model, data, dp
        self.ledger = ledger if ledger is not None else PrivacyLedger(job, dp, client_id)
        self.transfer_texts = transfer_texts
        self.k = int(model.num_labels or 0)
        self.dim = len(transfer_texts) * self.k
        self.noise = NoiseSource()
        self.stats_path = stats_path
        self._dp_opt: torch.optim.Optimizer | None = None  # DP-SGD's, alive across rounds

    def __call__(self, round_id: int, state: Vector) -> Vector:
        """Distil toward ``state`` (the consensus), train privately, return soft labels."""
        if state.shape != (self.dim,):
            raise ValueError(f"distill: the broadcast consensus has shape {state.shape}, "
                             f"expected ({self.dim},) = transfer_size x classes")
        self.ledger.charge(round_id)  # before any private step of this round
        start = time.perf_counter()
        consensus = np.asarray(state, dtype=np.float64).reshape(len(self.transfer_texts), self.k)
        info: dict[str, Any] = {"round": round_id, "client": self.client_id}
        if not np.allclose(consensus, 1.0 / self.k, atol=1e-6):  # the uniform start: nothing
            losses = distill_into(self.model, self.transfer_texts, consensus,
                                  steps=self.job.distill_steps, batch_size=self.job.batch_size,
                                  lr=self.job.lr, max_length=self.job.max_length,
                                  seed=_public_seed(self.job, self.client_id, round_id))
            info["distill_loss"] = float(np.mean(losses))
        info |= self._private_steps(round_id)
        soft = soft_labels(self.model, self.transfer_texts, max_length=self.job.max_length)
        out = np.clip(soft.reshape(-1), 0.0, 1.0)
        info["train_s"] = round(time.perf_counter() - start, 4)
        self._record(info)
        return out

    def _private_steps(self, round_id: int) -> dict[str, Any]:
        """``local_steps`` steps on the private records: DP-SGD with local noise (record
        level), or plain local training (dp none)."""
        job, cfg = self.job, self.dp.config
        if cfg is None:
            res = train_local(self.model, self.data, TrainConfig(
                steps=job.local_steps, batch_size=job.batch_size, learning_rate=job.lr,
                max_length=job.max_length, optimizer=_LOCAL_OPTIMIZER[job.local_optimizer]),
                seed=_public_seed(job, self.client_id, round_id))
            return {"examples": res.examples_seen, "loss": float(np.mean(res.losses))}
        params = [p for _, p in trainables(self.model)]
        if self._dp_opt is None:
            self._dp_opt = (torch.optim.Adam(params, lr=job.lr) if job.optimizer == "adam"
                            else torch.optim.SGD(params, lr=job.lr))
        expected_batch = cfg.sample_rate * len(self.data)  # public: q times the party's size
        seen, losses = 0, []
        for _ in range(job.local_steps):
            idx = poisson_indices(len(self.data), cfg.sample_rate, self.noise.uniform)
            cs = clipped_grad_sum(self.model, self.data, idx, clip=cfg.clip,
                                  max_length=job.max_length)
            noise = self.noise.gaussian(self.model.spec.size, cfg.noise_multiplier * cfg.clip)
            flat = torch.from_numpy((cs.vector + noise) / expected_batch)
            pos = 0
            for p in params:
                p.grad = flat[pos:pos + p.numel()].view(p.shape).to(p.dtype).clone()
                pos += p.numel()
            self._dp_opt.step()
            self._dp_opt.zero_grad(set_to_none=True)
            seen += cs.count
            if cs.count:
                losses.append(cs.loss)
        return {"examples": seen, "loss": float(np.mean(losses)) if losses else None}

    def _record(self, info: dict[str, Any]) -> None:
        if self.stats_path is None:
            return
        with self.stats_path.open("a") as f:
            f.write(json.dumps(info) + "\n")


def _public_seed(job: FinetuneJob, client_id: int, round_id: int) -> int:
    """Batch order and dropout of non-DP steps (public; no DP claim rests on it)."""
    return ((job.seed * 1_000_003 + client_id) * 1_000_003 + round_id) % (2**63)

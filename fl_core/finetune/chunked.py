"""Full weights through secure aggregation in chunks: one training round = ``K`` sub-rounds.

A model of ``d`` values (SmolLM2-135M: 134,515,008) is never aggregated whole: each training
round runs ``K = ceil(d / C)`` secure-aggregation rounds ("sub-rounds") of ``C`` values
(``job.chunk_size``; the last chunk zero-padded). The runtime's ``step`` (the count of applied
rounds, sent in every round start) fixes the layout (:class:`ChunkLayout`): step ``j`` is chunk
``k = j mod K`` of training round ``j // K``. The state a sub-round broadcasts is the chunk the
previous sub-round just updated (chunk ``(j - 1) mod K`` of the newest global; at step 0 chunk
``K - 1`` of the initial model, which every party builds alike from the job).

Client (:class:`ChunkedClientTask`): writes every broadcast chunk into its model and tracks
which global version each chunk holds. At chunk 0 of a training round it holds the whole newest
global (else it sits the round out), trains ``local_steps`` steps, and caches its update (one
float32 model-sized buffer); it answers chunk ``k`` with ``update[k C:(k + 1) C]``. It answers
each (training round, chunk), i.e. each step, **at most once** and never a step at or below
one it answered: a server that replayed a step to get the same chunk of the same cached update
under two cohorts would learn their difference (one party's chunk, when the cohorts differ by
one). The highest step answered is persisted before the chunk is returned
(:class:`secagg.fl_core.finetune.ledger.ChunkAnswers`, beside the ledger file), so a restarted
party refuses too; its training seed is fresh CSPRNG randomness, so one that trained again
would not recompute a bit-identical update (unless all its data fits one batch: the persisted
answers are the defence). A refused step is logged and the client sits that round out. The
cost: a sub-round that aborts after its start went out cannot be retried, so the server stops
there (dropouts within a sub-round are fine: the round completes with the survivors; a round
that never started, e.g. too few clients joined, is retried).

Server (:class:`ChunkedServerTask`): keeps the global in its model's float32 parameters,
applies FedAvg (``server_lr`` x the survivors' mean) to chunk ``k`` only and returns that chunk
(read back from float32) as the new state. Protocol buffers, masked vectors, encodings and
round-start messages are chunk-sized; the server checkpoint holds the current chunk only
(``C`` float64 values), so ``--resume`` is refused for these jobs (the global is not on disk).

No DP: see :func:`secagg.fl_core.finetune.preflight.check_pretrain`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.ledger import ChunkAnswers
from secagg.fl_core.finetune.memory import peak_rss_mb
from secagg.fl_core.finetune.party import JobData
from secagg.fl_core.runtime.driver import RoundOutcome
from secagg.models import AdaptedModel, Dataset, TrainConfig, evaluate, train_local
from secagg.rng import random_below

__all__ = ["ChunkLayout", "ChunkRefused", "ChunkedClientTask", "ChunkedServerTask",
           "ModelChunks", "chunk_functionals"]

log = logging.getLogger("secagg.fl_core.finetune")

Vector = npt.NDArray[np.float64]


class ChunkRefused(ValueError):
    """A client will not answer this step (replayed, stale model, no cached update); the
    client loop logs it and the client sits the round out."""


@dataclass(frozen=True)
class ChunkLayout:
    """Which chunk of which training round a step is.

    Raises:
        ValueError: ``dim`` or ``chunk_size`` is not a positive int.
    """

    dim: int
    chunk_size: int

    def __post_init__(self) -> None:
        for name in ("dim", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    @property
    def chunks(self) -> int:
        """``K``: sub-rounds per training round."""
        return math.ceil(self.dim / self.chunk_size)

    def position(self, step: int) -> tuple[int, int]:
        """``(training round, chunk)`` of ``step``.

        Raises:
            ValueError: a negative step.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return divmod(step, self.chunks)

    def broadcast_of(self, step: int) -> tuple[int, int]:
        """``(version, chunk)`` the state of ``step`` carries: the chunk step ``step - 1``
        updated, in the global after ``version`` training rounds (step 0: chunk ``K - 1`` of
        the initial model, version 0)."""
        if step == 0:
            return 0, self.chunks - 1
        r, k = self.position(step - 1)
        return r + 1, k

    def span(self, chunk: int) -> tuple[int, int]:
        """``[start, stop)`` of ``chunk`` in the flat vector (the last one may be short).

        Raises:
            ValueError: no such chunk.
        """
        if not 0 <= chunk < self.chunks:
            raise ValueError(f"chunk {chunk} is not in 0..{self.chunks - 1}")
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.dim)

    def pad(self, values: npt.NDArray[np.floating[Any]]) -> Vector:
        """``values`` as a float64 vector of ``chunk_size`` (zeros after them)."""
        out = np.zeros(self.chunk_size)
        out[:values.shape[0]] = values
        return out


class ModelChunks:
    """Read and write one chunk of a model's trainable weights in place (spec order), without
    ever building the model-sized flat vector."""

    def __init__(self, model: AdaptedModel, layout: ChunkLayout) -> None:
        if layout.dim != model.num_trainable:
            raise ValueError(f"layout dim {layout.dim} != the model's {model.num_trainable}")
        state = model.state_dict()  # detached tensors sharing the parameters' memory
        self._flat = [state[t.name].view(-1) for t in model.spec.tensors]
        self._offsets = model.spec.offsets
        self.layout = layout

    def _pieces(self, chunk: int) -> list[tuple[torch.Tensor, int, int, int]]:
        """(tensor, start in tensor, stop in tensor, start in chunk) overlapping ``chunk``."""
        start, stop = self.layout.span(chunk)
        out = []
        i = bisect_right(self._offsets, start) - 1
        while i < len(self._flat) and self._offsets[i] < stop:
            lo, hi = max(start, self._offsets[i]), min(stop, self._offsets[i + 1])
            if hi > lo:
                out.append((self._flat[i], lo - self._offsets[i], hi - self._offsets[i],
                            lo - start))
            i += 1
        return out

    def read(self, chunk: int) -> npt.NDArray[np.float32]:
        """The chunk's current weights (float32, unpadded)."""
        start, stop = self.layout.span(chunk)
        out = np.empty(stop - start, dtype=np.float32)
        for t, a, b, at in self._pieces(chunk):
            out[at:at + b - a] = t[a:b].detach().cpu().numpy()
        return out

    def write(self, chunk: int, values: npt.NDArray[np.floating[Any]]) -> None:
        """Write the chunk's weights from ``values`` (its unpadded length, or padded).

        Raises:
            ValueError: too few values, or a non-finite one.
        """
        start, stop = self.layout.span(chunk)
        if values.shape[0] < stop - start:
            raise ValueError(f"chunk {chunk} needs {stop - start} values, got "
                             f"{values.shape[0]}")
        src = np.asarray(values[:stop - start], dtype=np.float32)
        if not np.all(np.isfinite(src)):
            raise ValueError(f"chunk {chunk}: non-finite weights refused")
        with torch.no_grad():
            for t, a, b, at in self._pieces(chunk):
                t[a:b].copy_(torch.from_numpy(src[at:at + b - a]))


def chunk_functionals(values: npt.NDArray[np.floating[Any]]) -> tuple[float, float]:
    """Two linear functionals of a (padded) chunk: its sum and its alternating sum (even minus
    odd positions). A mean of chunks has the mean of their functionals: what the process test
    compares between the server's applied mean and the clients' answers."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.sum()), float(v[0::2].sum() - v[1::2].sum())


class ChunkedClientTask:
    """:class:`secagg.fl_core.runtime.client_app.StepAwareUpdate` of a chunked full-weight job
    for one party (see the module docstring)."""

    def __init__(self, job: FinetuneJob, client_id: int, model: AdaptedModel, data: Dataset,
                 *, chunk_size: int, protocol_clip: float, protocol_scale: int | None = None,
                 stats_path: Path | None = None, answers: ChunkAnswers | None = None) -> None:
        """``answers``: the steps this party has answered (default: kept in memory only)."""
        self.job, self.client_id, self.model, self.data = job, client_id, model, data
        self.answers = answers if answers is not None else ChunkAnswers(job, client_id)
        self.layout = ChunkLayout(model.num_trainable, chunk_size)
        self.chunks = ModelChunks(model, self.layout)
        self.protocol_clip = protocol_clip
        #: fractional bits of the protocol's grid: the stats' functionals are of the values
        #: the secure sum adds (rounded to nearest, as the protocol encodes them)
        self.protocol_scale = protocol_scale
        self.stats_path = stats_path
        #: the global version (training rounds applied) each chunk of the model holds; -1:
        #: this party's locally trained values
        self.versions = np.zeros(self.layout.chunks, dtype=np.int64)
        self._update: npt.NDArray[np.float32] | None = None
        self._update_round = -1

    def __call__(self, round_id: int, state: Vector) -> Vector:
        """Refused: a chunked job's contribution depends on the round start's step.

        Raises:
            ChunkRefused: always.
        """
        raise ChunkRefused("a chunked full-weight job answers only with the round's step")

    def for_step(self, round_id: int, step: int, state: Vector) -> Vector:
        """Write the broadcast chunk, train at chunk 0, answer this step's chunk of the update.

        Raises:
            ChunkRefused: a step at or below one already answered (a replay), a model not
                holding the newest global at chunk 0, no cached update for this training
                round, or a state of the wrong length.
            OSError: the chunk answers file cannot be written (nothing is answered).
        """
        start = time.perf_counter()
        if step <= self.last_answered:
            raise self._refuse(round_id, f"step {step} replayed (already answered step "
                               f"{self.last_answered}): a chunk is answered at most once")
        if state.shape != (self.layout.chunk_size,):
            raise self._refuse(round_id, f"state of shape {state.shape}, not "
                               f"({self.layout.chunk_size},)")
        r, k = self.layout.position(step)
        version, bchunk = self.layout.broadcast_of(step)
        self.chunks.write(bchunk, state)
        self.versions[bchunk] = version
        info: dict[str, Any] = {}
        if k == 0:
            stale = np.flatnonzero(self.versions != r)
            if stale.size:
                self._update, self._update_round = None, -1
                raise self._refuse(round_id, f"training round {r}: chunks {stale[:5].tolist()} "
                                   "do not hold the newest global (a missed sub-round)")
            info = self._train(round_id, r)
        if self._update is None or self._update_round != r:
            raise self._refuse(round_id, f"no update of training round {r} (sat out its "
                               "chunk 0)")
        a, b = self.layout.span(k)
        out = self.layout.pad(self._update[a:b])
        clamped = int(np.count_nonzero(np.abs(out) > self.protocol_clip))
        if clamped:
            log.warning("round %d: %d values beyond the protocol range +-%g clamped", round_id,
                        clamped, self.protocol_clip)
            np.clip(out, -self.protocol_clip, self.protocol_clip, out=out)
        self.answers.record(step)  # persisted before the chunk exists outside this object
        if k == self.layout.chunks - 1:
            self._update = None  # the round's last chunk: free the model-sized buffer
        grid = out if self.protocol_scale is None else (
            np.rint(out * 2.0 ** self.protocol_scale) / 2.0 ** self.protocol_scale)
        total, alt = chunk_functionals(grid)
        self._record(info | {"round": round_id, "client": self.client_id, "step": step,
                             "training_round": r, "chunk": k, "sum": total, "alt": alt,
                             "clamped": clamped,
                             "train_s": round(time.perf_counter() - start, 4),
                             "peak_rss_mb": peak_rss_mb()})
        return out

    @property
    def last_answered(self) -> int:
        """The highest step answered, by this process or an earlier one (-1: none)."""
        return self.answers.last

    def _train(self, round_id: int, training_round: int) -> dict[str, Any]:
        job = self.job
        res = train_local(self.model, self.data, TrainConfig(
            steps=job.local_steps, batch_size=job.batch_size, learning_rate=job.lr,
            max_length=job.max_length,
            optimizer="sgd" if job.local_optimizer == "sgd" else "adamw"),
            seed=random_below(1 << 63))  # fresh: a restarted party trains another update
        self._update, self._update_round = res.update, training_round
        self.versions[:] = -1  # the model now holds this party's local weights
        return {"examples": res.examples_seen,
                "loss": float(np.mean(res.losses)) if res.losses else None,
                "update_norm": round(res.update_norm, 6)}

    def _refuse(self, round_id: int, why: str) -> ChunkRefused:
        log.warning("round %d: client %d refuses: %s", round_id, self.client_id, why)
        return ChunkRefused(why)

    def _record(self, info: dict[str, Any]) -> None:
        if self.stats_path is None:
            return
        with self.stats_path.open("a") as f:
            f.write(json.dumps(info) + "\n")


class ChunkedServerTask:
    """:class:`secagg.fl_core.runtime.tasks.ServerTask` of a chunked full-weight job: FedAvg
    on one chunk per sub-round, the global held in the model's float32 parameters."""

    def __init__(self, job: FinetuneJob, model: AdaptedModel, data: JobData, *,
                 chunk_size: int, on_eval: Callable[[dict[str, Any]], None] | None = None,
                 ) -> None:
        self.job, self.model, self.data, self.on_eval = job, model, data, on_eval
        self.layout = ChunkLayout(model.num_trainable, chunk_size)
        self.chunks = ModelChunks(model, self.layout)
        self.step = 0  # sub-rounds applied (the runtime's step)
        self.evals: list[dict[str, Any]] = []
        self._report: dict[str, Any] = {}
        self._stop: str | None = None

    @property
    def training_rounds(self) -> int:
        """Training rounds whose every chunk is applied."""
        return self.step // self.layout.chunks

    def initial_state(self, dim: int) -> Vector:
        """Evaluate the initial model (the "before"); the state of step 0: chunk ``K - 1``.

        Raises:
            ValueError: ``dim`` is not the chunk size.
        """
        if dim != self.layout.chunk_size:
            raise ValueError(f"dim {dim} != chunk size {self.layout.chunk_size}")
        self.evaluate(0)
        return self.layout.pad(self.chunks.read(self.layout.chunks - 1))

    def begin_round(self, round_id: int) -> None:
        """Nothing to charge (no DP)."""

    def apply(self, state: Vector, out: RoundOutcome) -> Vector | None:
        """FedAvg on chunk ``step mod K``; the new chunk (read back from float32) is the state."""
        if out.aggregate is None:
            return None
        if not np.all(np.isfinite(out.aggregate)):
            log.error("round %d: non-finite aggregate refused", out.round_id)
            return None
        r, k = self.layout.position(self.step)
        mean = out.aggregate / max(out.weight_total, 1.0)
        a, b = self.layout.span(k)
        old = self.chunks.read(k)
        new = old + np.float32(self.job.server_lr) * mean[:b - a].astype(np.float32)
        self.chunks.write(k, new)
        written = self.chunks.read(k)
        mean_sum, mean_alt = chunk_functionals(mean)
        self._report = {"training_round": r, "chunk": k, "mean_sum": mean_sum,
                        "mean_alt": mean_alt,
                        "applied_sum": float(written.astype(np.float64).sum()
                                             - old.astype(np.float64).sum())}
        self.step += 1
        return self.layout.pad(written)

    def report(self, out: RoundOutcome) -> dict[str, Any]:
        """Which chunk of which training round, and the applied mean's functionals. A
        sub-round that aborted after its start went out ends the run (:meth:`stop_reason`)."""
        doc, self._report = (self._report if out.ok else {}), {}
        if not out.ok and out.sampled and out.bytes_down > 0:
            r, k = self.layout.position(self.step)
            self._stop = (f"chunk {k} of training round {r} aborted after its round start went "
                          "out; the clients answer each chunk at most once, so it cannot be "
                          f"retried (the global holds training round {r} in chunks < {k})")
        return doc

    def stop_reason(self) -> str | None:
        """Why no further sub-round can run (an aborted chunk), else None."""
        return self._stop

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Vector]]:
        """The step and evaluations only: the global is not checkpointed (see module)."""
        return {"task": "pretrain-chunked", "job": self.job.digest, "step": self.step,
                "evals": self.evals}, {}

    def load_state_dict(self, doc: dict[str, Any] | None, arrays: dict[str, Vector]) -> None:
        """A fresh start only.

        Raises:
            ValueError: a resume (the checkpoint holds one chunk, not the global).
        """
        if doc is not None:
            raise ValueError("--resume is not supported for a chunked full-weight pretrain job: "
                             "the checkpoint holds the current chunk only, not the 134.5M-value "
                             "global (start a fresh run)")

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out perplexity of the model's current weights, recorded with ``step``."""
        start = time.perf_counter()
        res = evaluate(self.model, self.data.test, max_length=self.job.max_length)
        doc: dict[str, Any] = {"step": step, "examples": res.examples,
                               "loss": round(res.loss, 5),
                               "seconds": round(time.perf_counter() - start, 2)}
        if res.perplexity is not None:
            doc["perplexity"] = round(float(res.perplexity), 5)
        self.evals.append(doc)
        if self.on_eval is not None:
            self.on_eval(doc)
        return doc

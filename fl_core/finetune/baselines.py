"""The baselines a classification job's summary shows beside its accuracy (issue 23): the
majority class and a non-private linear probe on the frozen pretrained features
(:mod:`secagg.models.baselines`), both read on the job's own held-out set.

The probe is a reference, not a party: it is fitted in the clear on the union of every party's
training records (the demo's data is a public corpus, which is what makes the figure available
at all), with its L2 strength chosen on a validation part of those records. A private job that
does not beat it bought nothing with its fine-tuning.

The figures depend only on the model, the data and its split, the head's pooling and
``max_length``; they are cached by a digest of those (``$SECAGG_CACHE``, else
``~/.cache/secagg``), so a job pays for them once per machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from secagg.fl_core.finetune.job import FinetuneJob
from secagg.fl_core.finetune.party import JobData
from secagg.models import AdaptedModel
from secagg.models.baselines import head_features, linear_probe, majority_accuracy
from secagg.models.data import ClassificationData

__all__ = ["baseline_key", "job_baselines"]

log = logging.getLogger("secagg.fl_core.finetune")
_VERSION = 1


def cache_dir() -> Path:
    """Where baselines are cached."""
    root = os.environ.get("SECAGG_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "secagg"


def baseline_key(job: FinetuneJob, model: AdaptedModel) -> str:
    """The digest of everything the baselines depend on."""
    doc = {"v": _VERSION, "model": job.model, "spec": model.spec.digest, "data": job.data,
           "seed": job.seed,
        "test_fraction": job.test_fraction, "eval_size": job.eval_size,
        "max_length": job.max_length}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def job_baselines(job: FinetuneJob, model: AdaptedModel, data: JobData,
                  *, cache: Path | None = None) -> dict[str, Any] | None:
    """``{"majority": acc, "linear_probe": acc, "linear_probe_l2": l2,
    "linear_probe_val": acc, "seconds": s}`` on ``data.test``; None for a job that is not
    classification. Reads and writes the cache (a broken cache entry is recomputed)."""
    if not isinstance(data.train, ClassificationData) or not isinstance(
            data.test, ClassificationData):
        return None
    path = (cache or cache_dir()) / "baselines" / f"{baseline_key(job, model)}.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        if {"majority", "linear_probe"} <= doc.keys():
            return doc | {"cached": True}
    except (OSError, ValueError):
        pass
    t0 = time.monotonic()
    train_y = np.asarray(data.train.labels, dtype=np.int64)
    test_y = np.asarray(data.test.labels, dtype=np.int64)
    x_train = head_features(model, data.train, max_length=job.max_length)
    x_test = head_features(model, data.test, max_length=job.max_length)
    probe = linear_probe(x_train, train_y, {"test": (x_test, test_y)},
                         num_labels=int(data.train.num_labels), seed=job.seed)
    doc = {"majority": round(majority_accuracy(train_y, test_y), 4),
           "linear_probe": round(probe.accuracy["test"], 4),
           "linear_probe_l2": probe.l2, "linear_probe_val": round(probe.val_accuracy, 4),
           "test_examples": len(test_y), "seconds": round(time.monotonic() - t0, 1)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)
    except OSError as exc:
        log.info("baselines not cached: %s", exc)
    return doc | {"cached": False}

"""Fine-tuning stack: real pretrained models offline, adapters, ParamSpec, data, local training.

- Models: :func:`build_model` (``"minilm"``, ``"smollm2"``, a local Hugging Face folder or a
  GGUF file; :data:`MODEL_ALIASES`) returns an :class:`AdaptedModel` whose trainable weights
  move as one float32 vector (:meth:`AdaptedModel.get_vector`, :meth:`AdaptedModel.set_vector`,
  :meth:`AdaptedModel.apply_update`) in the order of its :class:`ParamSpec`.
- Adapters: :class:`AdapterConfig` (``lora()``, ``prefix()``, ``prompt()``, ``full()``), one
  :class:`AdapterCodec` per :class:`AdapterKind` (:func:`get_codec`, the registry
  :data:`CODECS`); weights load strictly.
- ``ParamSpec``: sorted names, shapes, dtypes and a SHA-256 ``digest`` that every party
  compares before round 1 (:meth:`ParamSpec.require_same` raises :class:`SpecMismatchError`).
- Data: :func:`load_packaged` (:data:`PACKAGED_DATASETS`), user files (:func:`load_file`,
  :func:`load_csv`, :func:`load_jsonl`: ``text,label`` or ``prompt,response[,label]``),
  unlabeled documents for continued pre-training (:class:`TextData`, :func:`load_text_file`),
  :func:`train_test_split`, :func:`iid_partition`, :func:`dirichlet_partition`;
  :func:`make_batch` tokenises a batch (causal-LM labels use :data:`IGNORE_INDEX` for the
  prompt and padding positions).
- Training: :func:`train_local` (returns the update ``new - old``), DP-SGD with
  :func:`train_local_dp` and :class:`DpSgdConfig`, per-example clipped gradient sums
  (:func:`clipped_grad_sum`), :func:`evaluate`.

Aggregate a peft adapter: three parties build the same LoRA model (same ``init_seed``, so the
same spec digest and start vector), each proposes a vector, SecAgg+ sums them, and every party
loads the mean. ``protocols`` is imported by the example, never by this package.

>>> import numpy as np
>>> from secagg.models import AdapterConfig, TaskKind, build_model
>>> from secagg.protocols import SecAggConfig, run_round
>>> parties = {cid: build_model("minilm", task=TaskKind.CLASSIFICATION, num_labels=2,
...                             adapter=AdapterConfig.lora(r=4), init_seed=0)
...            for cid in (1, 2, 3)}
>>> len({m.spec.digest for m in parties.values()}), parties[1].num_trainable
(1, 37634)
>>> start = parties[1].get_vector()
>>> delta = {cid: np.full(start.size, 0.01 * cid, dtype=np.float32) for cid in parties}
>>> res = run_round(SecAggConfig(protocol="secagg+", n=3), delta)
>>> mean = (res.aggregate / res.weight_total).astype(np.float32)
>>> res.included, bool(np.allclose(mean, 0.02, atol=1e-4))
((1, 2, 3), True)
>>> for m in parties.values():
...     m.apply_update(mean)
>>> len({m.get_vector().tobytes() for m in parties.values()})
1

Submodules import torch, transformers and peft; this package never imports ``fl_core``,
``protocols`` or ``zmq``.
"""

from secagg.models.adapted import AdaptedModel, build_model, weights_sha256
from secagg.models.adapters import (
    CODECS,
    AdapterCodec,
    AdapterConfig,
    AdapterKind,
    FullCodec,
    PeftCodec,
    get_codec,
    lora_targets,
)
from secagg.models.assets import cache_dir, gguf_to_folder, minilm_folder, package_dir, smollm2_gguf
from secagg.models.batching import IGNORE_INDEX, make_batch
from secagg.models.client_batch import client_updates
from secagg.models.corpora import (
    PACKAGED_DATASETS,
    chatterbot,
    drug_reviews,
    load_packaged,
    sms_spam,
    trec,
    vader,
)
from secagg.models.data import (
    ClassificationData,
    Dataset,
    InstructionData,
    load_csv,
    load_file,
    load_jsonl,
    train_test_split,
)
from secagg.models.device import autocast, resolve_device
from secagg.models.dp_grad import ClippedSum, clipped_grad_sum, poisson_indices
from secagg.models.dp_train import DpSgdConfig, train_local_dp
from secagg.models.errors import (
    AdapterConfigError,
    AssetNotFoundError,
    DataFormatError,
    DtypeMismatchError,
    MissingKeysError,
    ModelsError,
    ParamSpecError,
    PartitionError,
    ShapeMismatchError,
    SpecMismatchError,
    UnexpectedKeysError,
    UnsupportedModelError,
    VectorLengthError,
)
from secagg.models.loading import MODEL_ALIASES, LoadedModel, TaskKind, load_model, resolve_source
from secagg.models.paramspec import ParamSpec, TensorSpec
from secagg.models.partition import dirichlet_partition, iid_partition, label_histograms, label_skew
from secagg.models.pooling import Pooling, default_pooling
from secagg.models.text import TextData, load_text_file, text_batch
from secagg.models.train import (
    EvalResult,
    TrainConfig,
    TrainResult,
    evaluate,
    macro_f1,
    train_local,
)

__all__ = [
    "CODECS",
    "IGNORE_INDEX",
    "MODEL_ALIASES",
    "PACKAGED_DATASETS",
    "AdaptedModel",
    "AdapterCodec",
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterKind",
    "AssetNotFoundError",
    "ClassificationData",
    "ClippedSum",
    "DataFormatError",
    "Dataset",
    "DpSgdConfig",
    "DtypeMismatchError",
    "EvalResult",
    "FullCodec",
    "InstructionData",
    "LoadedModel",
    "MissingKeysError",
    "ModelsError",
    "ParamSpec",
    "ParamSpecError",
    "PartitionError",
    "PeftCodec",
    "Pooling",
    "ShapeMismatchError",
    "SpecMismatchError",
    "TaskKind",
    "TensorSpec",
    "TextData",
    "TrainConfig",
    "TrainResult",
    "UnexpectedKeysError",
    "UnsupportedModelError",
    "VectorLengthError",
    "autocast",
    "build_model",
    "cache_dir",
    "chatterbot",
    "client_updates",
    "clipped_grad_sum",
    "default_pooling",
    "dirichlet_partition",
    "drug_reviews",
    "evaluate",
    "get_codec",
    "gguf_to_folder",
    "iid_partition",
    "label_histograms",
    "label_skew",
    "load_csv",
    "load_file",
    "load_jsonl",
    "load_model",
    "load_packaged",
    "load_text_file",
    "lora_targets",
    "macro_f1",
    "make_batch",
    "minilm_folder",
    "package_dir",
    "poisson_indices",
    "resolve_device",
    "resolve_source",
    "smollm2_gguf",
    "sms_spam",
    "text_batch",
    "train_local",
    "train_local_dp",
    "train_test_split",
    "trec",
    "vader",
    "weights_sha256",
]

"""Fine-tuning stack: real pretrained models offline, adapters, ParamSpec, data, local training.

Typical use by a client::

    from models import AdapterConfig, TaskKind, TrainConfig, build_model, load_packaged
    data = load_packaged("sms-spam")
    m = build_model("minilm", task=TaskKind.CLASSIFICATION, num_labels=data.num_labels,
                    adapter=AdapterConfig.lora(), init_seed=0)
    m.spec.digest                      # compared with every other party before round 1
    result = train_local(m, data, TrainConfig(steps=10), seed=1)
    result.update                      # float32 vector, new - old, in m.spec order

Submodules import torch, transformers and peft; this package never imports ``fl_core``,
``protocols`` or ``zmq``.
"""

from models.adapted import AdaptedModel, build_model, weights_sha256
from models.adapters import (
    CODECS,
    AdapterCodec,
    AdapterConfig,
    AdapterKind,
    FullCodec,
    PeftCodec,
    get_codec,
    lora_targets,
)
from models.assets import cache_dir, gguf_to_folder, minilm_folder, package_dir, smollm2_gguf
from models.batching import IGNORE_INDEX, make_batch
from models.corpora import (
    PACKAGED_DATASETS,
    chatterbot,
    drug_reviews,
    load_packaged,
    sms_spam,
    trec,
    vader,
)
from models.data import (
    ClassificationData,
    Dataset,
    InstructionData,
    load_csv,
    load_file,
    load_jsonl,
    train_test_split,
)
from models.device import autocast, resolve_device
from models.errors import (
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
from models.loading import MODEL_ALIASES, LoadedModel, TaskKind, load_model, resolve_source
from models.paramspec import ParamSpec, TensorSpec
from models.partition import dirichlet_partition, iid_partition, label_histograms, label_skew
from models.train import EvalResult, TrainConfig, TrainResult, evaluate, macro_f1, train_local

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
    "DataFormatError",
    "Dataset",
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
    "ShapeMismatchError",
    "SpecMismatchError",
    "TaskKind",
    "TensorSpec",
    "TrainConfig",
    "TrainResult",
    "UnexpectedKeysError",
    "UnsupportedModelError",
    "VectorLengthError",
    "autocast",
    "build_model",
    "cache_dir",
    "chatterbot",
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
    "lora_targets",
    "macro_f1",
    "make_batch",
    "minilm_folder",
    "package_dir",
    "resolve_device",
    "resolve_source",
    "smollm2_gguf",
    "sms_spam",
    "train_local",
    "train_test_split",
    "trec",
    "vader",
    "weights_sha256",
]

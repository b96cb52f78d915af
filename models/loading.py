"""Load a pretrained model and its tokenizer, offline, for one task.

A source is an alias of a packaged model (``"minilm"``, ``"smollm2"``), a local Hugging
Face folder (one holding ``config.json``) or a local ``.gguf`` file (converted once into the
user cache, see :func:`secagg.models.assets.gguf_to_folder`). Every ``from_pretrained`` call passes
``local_files_only=True``: nothing is ever fetched from a hub.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from secagg.models.assets import gguf_to_folder, minilm_folder, smollm2_gguf
from secagg.models.errors import AssetNotFoundError, UnsupportedModelError
from secagg.models.pooling import MEAN_POOLED_CLASSES, Pooling, default_pooling

# transformers 5.25 loads hub kernels by default (use_kernels=True) and fails offline without
# the `kernels` package; nothing here may reach a hub, and 5.23 already defaults to False.
_NO_HUB_KERNELS: dict[str, bool] = {"use_kernels": False}

__all__ = ["MODEL_ALIASES", "LoadedModel", "TaskKind", "load_model", "resolve_source"]


class TaskKind(Enum):
    """What the model is fine-tuned for."""

    CLASSIFICATION = "classification"  # text -> label, sequence-classification head
    CAUSAL_LM = "causal-lm"  # prompt -> response, loss on the response tokens


MODEL_ALIASES: dict[str, Callable[[], Path]] = {
    "minilm": minilm_folder,
    "smollm2": lambda: gguf_to_folder(smollm2_gguf()),
}

# Encoder-only architectures: a causal-LM head on them would be untrained noise.
_ENCODER_ONLY = frozenset(
    {
        "bert",
        "roberta",
        "distilbert",
        "albert",
        "electra",
        "deberta",
        "deberta-v2",
        "xlm-roberta",
        "mpnet",
        "camembert",
    }
)


@dataclass
class LoadedModel:
    """A model ready for an adapter, with its tokenizer and what it was loaded as."""

    model: PreTrainedModel
    tokenizer: Any  # a transformers tokenizer (their classes share no useful static type)
    task: TaskKind
    model_type: str
    source: str
    num_labels: int | None
    pooling: Pooling | None = None  # what the classification head reads; None for a causal LM


def resolve_source(source: str | Path) -> Path:
    """The local Hugging Face folder behind ``source`` (converting a GGUF when needed).

    Raises:
        TypeError: ``source`` is neither str nor Path.
        AssetNotFoundError: no such alias, folder or file, or a folder without config.json.
        UnsupportedModelError: a file that is not a ``.gguf``, or a GGUF transformers rejects.
    """
    if not isinstance(source, str | Path):
        raise TypeError(f"source must be str or Path, got {type(source).__name__}")
    if isinstance(source, str) and source in MODEL_ALIASES:
        return MODEL_ALIASES[source]()
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AssetNotFoundError(f"{path} holds no config.json (not a Hugging Face folder)")
        return path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UnsupportedModelError(f"{path}: expected a folder or a .gguf file")
        return gguf_to_folder(path)
    raise AssetNotFoundError(
        f"model source {str(source)!r} is neither an alias {sorted(MODEL_ALIASES)} "
        "nor an existing folder or .gguf file"
    )


def load_model(
    source: str | Path,
    *,
    task: TaskKind,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    pooling: Pooling | None = None,
) -> LoadedModel:
    """Load ``source`` for ``task`` with a matching tokenizer (pad token always set).

    Classification needs ``num_labels`` >= 2 (the head is freshly initialised: seed the
    torch RNG first if parties must agree on it); causal LM takes no ``num_labels``.
    ``pooling`` picks what the classification head reads; None: what the model was trained
    with (:func:`secagg.models.pooling.default_pooling`: mean for MiniLM) where this
    architecture has a mean-pooled classifier, else the pooler.

    Raises:
        TypeError: ``task`` is not a TaskKind, or ``pooling`` not a Pooling.
        UnsupportedModelError: a wrong ``num_labels``, an encoder-only model asked to be a
            causal LM, a pooling for a causal LM or mean pooling for an architecture without a
            mean-pooled classifier, or a model or tokenizer transformers cannot load.
        AssetNotFoundError: the source does not exist.
    """
    if not isinstance(task, TaskKind):
        raise TypeError("task must be a TaskKind")
    if pooling is not None and not isinstance(pooling, Pooling):
        raise TypeError("pooling must be a Pooling or None")
    if task is TaskKind.CAUSAL_LM and pooling is not None:
        raise UnsupportedModelError("a causal LM takes no pooling")
    if task is TaskKind.CLASSIFICATION and (
        not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2
    ):
        raise UnsupportedModelError(f"classification needs num_labels >= 2, got {num_labels!r}")
    if task is TaskKind.CAUSAL_LM and num_labels is not None:
        raise UnsupportedModelError("a causal LM takes no num_labels")
    folder = resolve_source(source)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedModelError(f"cannot load config/tokenizer from {folder}: {exc}") from exc
    model_type = str(config.model_type)
    if task is TaskKind.CAUSAL_LM and model_type in _ENCODER_ONLY:
        raise UnsupportedModelError(f"{model_type!r} is encoder-only: it cannot be a causal LM")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UnsupportedModelError(f"tokenizer of {folder} has neither pad nor eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if task is TaskKind.CLASSIFICATION and pooling is None:
        # The model's own pooling where we have a classifier for it; else what loaded before.
        pooling = default_pooling(folder)
        if model_type not in MEAN_POOLED_CLASSES:
            pooling = Pooling.POOLER
    if task is TaskKind.CLASSIFICATION:
        if pooling is Pooling.MEAN and model_type not in MEAN_POOLED_CLASSES:
            raise UnsupportedModelError(
                f"no mean-pooled classifier for {model_type!r} "
                f"(known: {sorted(MEAN_POOLED_CLASSES)}): use Pooling.POOLER"
            )
    try:
        if task is TaskKind.CLASSIFICATION:
            model_class: Any = (
                MEAN_POOLED_CLASSES[model_type]
                if pooling is Pooling.MEAN
                else AutoModelForSequenceClassification
            )
            model = model_class.from_pretrained(
                folder, num_labels=num_labels, dtype=dtype, local_files_only=True, **_NO_HUB_KERNELS
            )
            # Decoder classifiers pool the last non-pad token and must know the pad id.
            model.config.pad_token_id = tokenizer.pad_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, local_files_only=True, **_NO_HUB_KERNELS)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedModelError(f"cannot load {folder} for {task.value}: {exc}") from exc
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        task=task,
        model_type=model_type,
        source=str(source),
        num_labels=num_labels,
        pooling=pooling,
    )

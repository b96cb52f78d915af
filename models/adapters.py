"""Adapters (LoRA, prefix tuning, prompt tuning, full fine-tuning) behind one codec interface.

A codec wraps a loaded model for training, reads the trainable weights as a state dict and
writes them back **strictly**. PEFT's ``set_peft_model_state_dict`` loads leniently (it
reports missing and unexpected keys but does not refuse them), so the PEFT codec checks the
keys against the agreed :class:`secagg.models.paramspec.ParamSpec` first, inspects the keys PEFT
reports, and finally reads the weights back to prove every value was written.

Codecs are stateless and kept in a registry keyed by :class:`AdapterKind`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import ClassVar

import torch
from peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from secagg.models.errors import (
    AdapterConfigError,
    MissingKeysError,
    ParamSpecError,
    UnexpectedKeysError,
    UnsupportedModelError,
)
from secagg.models.loading import LoadedModel, TaskKind
from secagg.models.paramspec import ParamSpec
from secagg.models.prefix import prefix_tuning_model

__all__ = [
    "CODECS",
    "AdapterCodec",
    "AdapterConfig",
    "AdapterKind",
    "FullCodec",
    "PeftCodec",
    "get_codec",
    "lora_targets",
]


class AdapterKind(Enum):
    """Which weights a client trains and the parties aggregate."""

    LORA = "lora"
    PREFIX = "prefix"
    PROMPT = "prompt"
    FULL = "full"


# Attention projections per architecture: all four for decoders (q, k, v, o), query and
# value for BERT-like encoders (the LoRA paper's choice). Others fall back to PEFT's table.
_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra"), ("query", "value")),
    "distilbert": ("q_lin", "v_lin"),
    "gpt2": ("c_attn",),
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3",
            "gemma3_text",
            "smollm3",
            "phi3",
            "olmo",
            "olmo2",
        ),
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    ),
}


def lora_targets(model_type: str) -> tuple[str, ...]:
    """The LoRA target modules used for ``model_type`` when the config names none.

    Raises:
        UnsupportedModelError: no default is known for this architecture.
    """
    if model_type in _LORA_TARGETS:
        return _LORA_TARGETS[model_type]
    fallback = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if fallback:
        return tuple(fallback)
    raise UnsupportedModelError(f"no default LoRA targets for {model_type!r}: name them")


@dataclass(frozen=True)
class AdapterConfig:
    """An adapter's hyperparameters; fields that do not apply to ``kind`` are ignored.

    Build with :meth:`lora`, :meth:`prefix`, :meth:`prompt` or :meth:`full`.

    Raises:
        TypeError: ``kind`` is not an AdapterKind.
        AdapterConfigError: a non-positive rank, alpha or token count, dropout outside [0, 1),
            or an empty target list.
    """

    kind: AdapterKind
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    num_virtual_tokens: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.kind, AdapterKind):
            raise TypeError("kind must be an AdapterKind")
        for name in ("r", "alpha", "num_virtual_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AdapterConfigError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise AdapterConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None and (
            not isinstance(self.target_modules, tuple)
            or not self.target_modules
            or not all(isinstance(t, str) and t for t in self.target_modules)
        ):
            raise AdapterConfigError("target_modules must be None or a non-empty tuple of str")

    @classmethod
    def lora(
        cls,
        *,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules: tuple[str, ...] | None = None,
    ) -> AdapterConfig:
        """LoRA of rank ``r`` on ``target_modules`` (default: per architecture)."""
        return cls(
            AdapterKind.LORA, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules
        )

    @classmethod
    def prefix(cls, *, num_virtual_tokens: int = 8) -> AdapterConfig:
        """Prefix tuning: trained key/value prefixes in every layer."""
        return cls(AdapterKind.PREFIX, num_virtual_tokens=num_virtual_tokens)

    @classmethod
    def prompt(cls, *, num_virtual_tokens: int = 8) -> AdapterConfig:
        """Prompt tuning: trained soft-prompt embeddings before the input."""
        return cls(AdapterKind.PROMPT, num_virtual_tokens=num_virtual_tokens)

    @classmethod
    def full(cls) -> AdapterConfig:
        """Full fine-tuning of every weight."""
        return cls(AdapterKind.FULL)

    def to_meta(self, model_type: str) -> dict[str, str]:
        """The fields that matter for ``kind``, as strings for a ParamSpec's metadata.

        Raises:
            UnsupportedModelError: LoRA without targets on an unknown architecture.
        """
        meta = {"adapter": self.kind.value}
        if self.kind is AdapterKind.LORA:
            targets = self.target_modules or lora_targets(model_type)
            meta |= {
                "lora.r": str(self.r),
                "lora.alpha": str(self.alpha),
                "lora.dropout": repr(float(self.dropout)),
                "lora.targets": ",".join(sorted(targets)),
            }
        elif self.kind in (AdapterKind.PREFIX, AdapterKind.PROMPT):
            meta["virtual_tokens"] = str(self.num_virtual_tokens)
        return meta


class AdapterCodec(ABC):
    """Wrap a model for one adapter kind, and move its trainable weights in and out."""

    kind: AdapterKind
    #: Chunk size (values) advised for aggregating this adapter's vector; None: one piece.
    suggested_chunk_values: ClassVar[int | None] = None

    @abstractmethod
    def wrap(self, loaded: LoadedModel, config: AdapterConfig) -> torch.nn.Module:
        """Return the model to train, with exactly the adapter's weights trainable.

        Raises:
            AdapterConfigError: ``config.kind`` is not this codec's kind.
            UnsupportedModelError: the adapter cannot be applied to this model.
        """

    @abstractmethod
    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The trainable weights by canonical name (detached; may share memory)."""

    @abstractmethod
    def load_state_dict(
        self, model: torch.nn.Module, state: Mapping[str, torch.Tensor], spec: ParamSpec
    ) -> None:
        """Write ``state`` into ``model`` after checking it strictly against ``spec``.

        Raises:
            MissingKeysError, UnexpectedKeysError, ShapeMismatchError, DtypeMismatchError:
                ``state`` does not match ``spec``, or the model does not take every key.
            ParamSpecError: a value was not written as given.
        """

    def _check_kind(self, config: AdapterConfig) -> None:
        if config.kind is not self.kind:
            raise AdapterConfigError(f"{type(self).__name__} cannot apply a {config.kind} config")


class PeftCodec(AdapterCodec):
    """LoRA, prefix and prompt tuning through ``peft``.

    Prefix tuning uses PEFT's prompt encoder and weights with the forward pass of
    :mod:`secagg.models.prefix`, which passes the prefix under whichever KV-cache argument
    name the installed transformers takes.
    """

    def __init__(self, kind: AdapterKind) -> None:
        if kind is AdapterKind.FULL:
            raise AdapterConfigError("full fine-tuning is not a PEFT method")
        self.kind = kind

    def _peft_config(self, loaded: LoadedModel, config: AdapterConfig) -> PeftConfig:
        task = TaskType.SEQ_CLS if loaded.task is TaskKind.CLASSIFICATION else TaskType.CAUSAL_LM
        if self.kind is AdapterKind.LORA:
            targets = config.target_modules or lora_targets(loaded.model_type)
            return LoraConfig(
                task_type=task,
                r=config.r,
                lora_alpha=config.alpha,
                lora_dropout=config.dropout,
                target_modules=list(targets),
            )
        cls = PrefixTuningConfig if self.kind is AdapterKind.PREFIX else PromptTuningConfig
        return cls(task_type=task, num_virtual_tokens=config.num_virtual_tokens)

    def _build(self, loaded: LoadedModel, config: AdapterConfig) -> PeftModel:
        peft_config = self._peft_config(loaded, config)
        if isinstance(peft_config, PrefixTuningConfig):
            # PEFT's own prefix forward breaks on transformers >= 5.24 (secagg.models.prefix).
            return prefix_tuning_model(loaded.model, peft_config)
        return get_peft_model(loaded.model, peft_config)

    def wrap(self, loaded: LoadedModel, config: AdapterConfig) -> torch.nn.Module:
        self._check_kind(config)
        try:
            model = self._build(loaded, config)
        except (ValueError, KeyError, AttributeError) as exc:
            raise UnsupportedModelError(
                f"cannot apply {self.kind.value} to {loaded.model_type}: {exc}"
            ) from exc
        # What is trained must be exactly what is aggregated: no trainable weight outside the
        # adapter state dict (it would drift apart between clients), none frozen inside it.
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        shipped = sum(t.numel() for t in self.state_dict(model).values())
        if trained != shipped:
            raise UnsupportedModelError(
                f"{self.kind.value}: {trained} trainable values but {shipped} in the state dict"
            )
        return model

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}

    def load_state_dict(
        self, model: torch.nn.Module, state: Mapping[str, torch.Tensor], spec: ParamSpec
    ) -> None:
        if not isinstance(model, PeftModel):
            raise TypeError("model must be a PeftModel built by this codec")
        spec.check_state_dict(state)
        result = set_peft_model_state_dict(model, dict(state))
        prompt_learning = bool(model.peft_config["default"].is_prompt_learning)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        # Prompt-learning weights are loaded by a second, separate call inside PEFT, which
        # makes the first call report them as missing/unexpected; the read-back covers them.
        missing = set(result.missing_keys) & trainable  # type: ignore[attr-defined]
        unexpected = set(result.unexpected_keys)  # type: ignore[attr-defined]
        if prompt_learning:
            missing = {n for n in missing if not n.startswith("prompt_encoder.")}
            unexpected.discard("prompt_embeddings")
        if missing:
            raise MissingKeysError(sorted(missing))
        if unexpected:
            raise UnexpectedKeysError(sorted(unexpected))
        _verify_written(self.state_dict(model), state)


class FullCodec(AdapterCodec):
    """Full fine-tuning: every parameter trainable, named as ``model.named_parameters()``.

    Tied weights (a language-model head sharing the embedding) appear once.
    """

    kind = AdapterKind.FULL
    suggested_chunk_values = 1 << 22  # 4M values (16 MiB float32) per aggregation chunk

    def wrap(self, loaded: LoadedModel, config: AdapterConfig) -> torch.nn.Module:
        self._check_kind(config)
        loaded.model.requires_grad_(True)
        return loaded.model

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in model.named_parameters()}

    def load_state_dict(
        self, model: torch.nn.Module, state: Mapping[str, torch.Tensor], spec: ParamSpec
    ) -> None:
        spec.check_state_dict(state)
        params = dict(model.named_parameters())
        if set(params) - set(state):
            raise MissingKeysError(sorted(set(params) - set(state)))
        if set(state) - set(params):
            raise UnexpectedKeysError(sorted(set(state) - set(params)))
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name])


def _verify_written(after: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> None:
    if set(after) != set(given):
        raise ParamSpecError("the model's adapter keys changed while loading")
    for name, value in given.items():
        if not torch.equal(after[name].cpu(), value.to("cpu", after[name].dtype)):
            raise ParamSpecError(f"{name!r} was not written as given")


CODECS: Mapping[AdapterKind, AdapterCodec] = MappingProxyType(
    {
        AdapterKind.LORA: PeftCodec(AdapterKind.LORA),
        AdapterKind.PREFIX: PeftCodec(AdapterKind.PREFIX),
        AdapterKind.PROMPT: PeftCodec(AdapterKind.PROMPT),
        AdapterKind.FULL: FullCodec(),
    }
)


def get_codec(kind: AdapterKind) -> AdapterCodec:
    """The codec registered for ``kind``.

    Raises:
        TypeError: ``kind`` is not an AdapterKind.
    """
    if not isinstance(kind, AdapterKind):
        raise TypeError("kind must be an AdapterKind")
    return CODECS[kind]

"""Prefix tuning that works whatever transformers calls the KV-cache argument.

Prefix tuning trains key/value vectors that every attention layer sees before the input.
PEFT builds them (``PeftModel.get_prompt``: a ``DynamicCache`` holding one key/value pair per
layer) and hands them to the model as its KV cache, always as ``past_key_values=``.
transformers 5.24 renamed that forward argument to ``cache`` (BERT, Llama and others; the old
name survives only as a deprecated alias on some forwards), and PEFT 0.21.2 then breaks:

- sequence classification: ``PeftModelForSequenceClassification._prefix_tuning_forward``
  looks for ``past_key_values`` in the signatures of the model's and the backbone's
  ``forward``, finds it in neither and raises ``ValueError("Model does not support past key
  values which are required for prefix tuning.")``;
- causal LM: ``PeftModelForCausalLM.forward`` still passes ``past_key_values=``, which works
  only through the deprecated alias (a FutureWarning on every step). Once the alias is gone
  the keyword would vanish into ``**kwargs`` and the prefix would be ignored without an error.

The classes here keep PEFT's prompt encoder, its weights and its state-dict names (a
:class:`~secagg.models.paramspec.ParamSpec` is the same on every transformers release) and
replace only the forward pass. :func:`cache_argument` is the one place that picks the
argument name, from the installed model's own signature, and every forward checks that each
layer really read the prefix.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from peft import (
    PeftConfig,
    PeftModel,
    PeftModelForCausalLM,
    PeftModelForSequenceClassification,
    PrefixTuningConfig,
    TaskType,
)
from transformers import Cache, PreTrainedModel

from secagg.models.errors import UnsupportedModelError

__all__ = [
    "CACHE_ARGUMENTS",
    "PrefixTunedForCausalLM",
    "PrefixTunedForSequenceClassification",
    "cache_argument",
    "prefix_tuning_model",
]

#: Names of the KV-cache keyword, newest first (transformers >= 5.24 takes ``cache``).
CACHE_ARGUMENTS: tuple[str, ...] = ("cache", "past_key_values")

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword under which ``model.forward`` takes a KV cache (see :data:`CACHE_ARGUMENTS`).

    The model's own ``forward`` is asked first (Llama's causal-LM head names the argument).
    A forward that names neither but takes ``**kwargs`` hands them to its backbone
    (``model.base_model``, e.g. BERT's classifier to ``BertModel``), whose forward decides.

    Raises:
        TypeError: ``model`` is not a torch module.
        UnsupportedModelError: no forward on that path takes a KV cache under either name.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    module: torch.nn.Module | None = model
    seen: list[str] = []
    while module is not None:
        params = inspect.signature(module.forward).parameters
        for name in CACHE_ARGUMENTS:
            if name in params and params[name].kind in _NAMED:
                return name
        seen.append(type(module).__name__)
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        backbone = getattr(module, "base_model", None)
        module = (
            backbone
            if takes_kwargs and isinstance(backbone, torch.nn.Module) and backbone is not module
            else None
        )
    raise UnsupportedModelError(
        f"prefix tuning needs a KV cache argument ({' or '.join(CACHE_ARGUMENTS)}), "
        f"but no forward of {' -> '.join(seen)} takes one"
    )


def prefix_tuning_model(model: PreTrainedModel, config: PrefixTuningConfig) -> PeftModel:
    """Wrap ``model`` for prefix tuning as ``peft.get_peft_model`` would, with a working forward.

    ``config.task_type`` picks :class:`PrefixTunedForSequenceClassification` (``SEQ_CLS``) or
    :class:`PrefixTunedForCausalLM` (``CAUSAL_LM``).

    Raises:
        TypeError: ``config`` is not a PrefixTuningConfig.
        UnsupportedModelError: another task type, a model that takes no KV cache, or one whose
            prefix PEFT does not build as a transformers ``Cache``.
    """
    if not isinstance(config, PrefixTuningConfig):
        raise TypeError(f"config must be a PrefixTuningConfig, got {type(config).__name__}")
    if config.task_type == TaskType.SEQ_CLS:
        return PrefixTunedForSequenceClassification(model, config)
    if config.task_type == TaskType.CAUSAL_LM:
        return PrefixTunedForCausalLM(model, config)
    raise UnsupportedModelError(
        f"prefix tuning is wired for SEQ_CLS and CAUSAL_LM, not {config.task_type}"
    )


def _checked_config(config: PeftConfig) -> PrefixTuningConfig:
    if not isinstance(config, PrefixTuningConfig):
        raise TypeError(f"peft_config must be a PrefixTuningConfig, got {type(config).__name__}")
    return config


def _cache_prefix(peft_model: PeftModel, batch_size: int) -> Cache:
    """PEFT's prefix key/values for ``batch_size`` rows, as a fresh transformers Cache.

    Raises:
        UnsupportedModelError: PEFT post-processes this architecture's prefix into another
            form (e.g. BLOOM's tuple of tensors), which no KV-cache argument takes.
    """
    prefix = peft_model.get_prompt(batch_size)
    if not isinstance(prefix, Cache):
        raise UnsupportedModelError(
            f"PEFT builds this model's prefix as {type(prefix).__name__}, not a transformers Cache"
        )
    return prefix


def _given(
    kwargs: dict[str, Any],
    output_attentions: bool | None,
    output_hidden_states: bool | None,
    return_dict: bool | None,
) -> dict[str, Any]:
    """``kwargs`` plus the output flags that were set (None leaves the model's default)."""
    flags = {
        "output_attentions": output_attentions,
        "output_hidden_states": output_hidden_states,
        "return_dict": return_dict,
    }
    return kwargs | {k: v for k, v in flags.items() if v is not None}


def _prefix_forward(
    peft_model: PeftModel,
    argument: str,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    labels: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> Any:
    """Run the base model with PEFT's prefix as its KV cache, passed as ``argument``."""
    first = input_ids if input_ids is not None else inputs_embeds
    if first is None:
        raise ValueError("pass input_ids or inputs_embeds")
    batch_size = first.shape[0]
    virtual = int(peft_model.active_peft_config.num_virtual_tokens)
    prefix = _cache_prefix(peft_model, batch_size)
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                "prefix tuning needs a 2-D (batch, tokens) attention mask, "
                f"got {attention_mask.dim()}-D"
            )
        # The virtual tokens are always visible: a column of ones in front of the mask.
        ones = attention_mask.new_ones(batch_size, virtual)
        attention_mask = torch.cat((ones, attention_mask), dim=1)
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"] + virtual  # after the prefix, as PEFT does
    out = peft_model.get_base_model()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        inputs_embeds=inputs_embeds,
        labels=labels,
        **{argument: prefix},
        **kwargs,
    )
    # A layer that used the cache appended the input's keys to it. One that did not (a renamed
    # argument swallowed by **kwargs) would train nothing while looking fine: refuse that.
    if any(prefix.get_seq_length(i) <= virtual for i in range(len(prefix.layers))):
        raise UnsupportedModelError(
            f"{type(peft_model.get_base_model()).__name__} ignored the prefix passed as "
            f"{argument}=: prefix tuning would not condition the model"
        )
    return out


class _CachePrefix(PeftModel):
    """The forward both prefix-tuned task classes share: PEFT's prompt encoder builds the
    prefix, which goes to the base model under :func:`cache_argument`. Subclasses list this
    first, then PEFT's task class, so ``super().__init__`` is PEFT's.

    Raises:
        TypeError: ``peft_config`` is not a PrefixTuningConfig.
        UnsupportedModelError: ``model`` takes no KV cache, or PEFT does not build its prefix
            as a transformers ``Cache``.
    """

    # Segment ids the base model cannot take with a prefix (a decoder has no segments).
    _drop_kwargs: tuple[str, ...] = ()

    def __init__(
        self, model: PreTrainedModel, peft_config: PeftConfig, adapter_name: str = "default"
    ) -> None:
        config = _checked_config(peft_config)
        argument = cache_argument(model)
        super().__init__(model, config, adapter_name=adapter_name)
        self.cache_argument = argument
        _cache_prefix(self, 1)  # refuse an unusable architecture now, not at the first step

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        task_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The base model's output with the trained prefix in every layer.

        ``task_ids`` (multitask prompt tuning only) is ignored, as in PEFT's prefix forward.

        Raises:
            ValueError: neither ``input_ids`` nor ``inputs_embeds``, or a mask that is not 2-D.
            UnsupportedModelError: the base model did not read the prefix.
        """
        for name in self._drop_kwargs:
            kwargs.pop(name, None)
        return _prefix_forward(
            self,
            self.cache_argument,
            input_ids,
            attention_mask,
            inputs_embeds,
            labels,
            _given(kwargs, output_attentions, output_hidden_states, return_dict),
        )


class PrefixTunedForSequenceClassification(_CachePrefix, PeftModelForSequenceClassification):
    """PEFT's prefix-tuned classifier whose forward passes the prefix under :func:`cache_argument`
    (raises as :class:`_CachePrefix`)."""


class PrefixTunedForCausalLM(_CachePrefix, PeftModelForCausalLM):
    """PEFT's prefix-tuned causal LM whose forward passes the prefix under :func:`cache_argument`;
    ``token_type_ids`` are dropped as in PEFT's prefix forward, and ``generate`` is PEFT's own
    (raises as :class:`_CachePrefix`)."""

    _drop_kwargs = ("token_type_ids",)

"""Which sentence vector a classification head reads: the architecture's pooler or a mean.

BERT's sequence classifier reads ``pooler_output = tanh(W h_CLS + b)``. Sentence encoders
such as all-MiniLM-L6-v2 were trained with *mean* pooling instead (the attention-mask
weighted mean of the last hidden states) and their pooler is a stale left-over of
pretraining: a linear probe on it reaches 0.670 on TREC, on mean-pooled features 0.860.

:func:`default_pooling` lets the model say which it was trained with: a sentence-transformers
folder (``modules.json`` naming a ``Pooling`` module whose config sets
``pooling_mode_mean_tokens``) gets :attr:`Pooling.MEAN`, anything else :attr:`Pooling.POOLER`
(the behaviour of ``AutoModelForSequenceClassification``). :data:`MEAN_POOLED_CLASSES` holds,
per architecture, the classifier that reads the masked mean; its head stays one
``nn.Linear`` named ``classifier`` (PEFT trains it as a module to save, per-example gradients
come from its Linear hooks) and its backbone is built without the unused pooler.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    BertForSequenceClassification,
    BertModel,
    BertPreTrainedModel,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

__all__ = [
    "MEAN_POOLED_CLASSES",
    "MeanPooledBertForSequenceClassification",
    "Pooling",
    "default_pooling",
    "masked_mean",
]


class Pooling(Enum):
    """The sentence vector that a classification head reads."""

    POOLER = "pooler"  # the architecture's own (BERT: tanh of a dense layer on [CLS])
    MEAN = "mean"  # attention-mask weighted mean of the last hidden states


def default_pooling(folder: Path) -> Pooling:
    """The pooling ``folder``'s model was trained with: MEAN for a sentence-transformers folder
    whose Pooling module uses mean tokens (and nothing else), else POOLER.

    An unreadable or malformed sentence-transformers description counts as absent (POOLER):
    it only picks a default, and the choice enters the ParamSpec digest all parties compare.
    """
    try:
        modules = json.loads((folder / "modules.json").read_text())
        paths = [
            m.get("path", "")
            for m in modules
            if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling")
        ]
        if len(paths) != 1:
            return Pooling.POOLER
        config = json.loads((folder / str(paths[0]) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return Pooling.POOLER
    if not isinstance(config, dict):
        return Pooling.POOLER
    modes = {k: bool(v) for k, v in config.items() if k.startswith("pooling_mode_")}
    if modes.get("pooling_mode_mean_tokens") and sum(modes.values()) == 1:
        return Pooling.MEAN
    return Pooling.POOLER


def _keep_weights(mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
    """(B, T) float weights, 1 on the tokens of ``hidden`` that the mask lets be attended.

    A 2-D mask wider than the hidden states has columns for KV-cache positions (prefix
    tuning prepends them) that are no tokens of the input: its last T columns are kept. A 4-D
    mask (B, 1, Tq, Tk), as the batched trainer passes, is read from its first query row;
    additive (0 keeps, very negative masks) or boolean (True keeps).
    """
    bsz, width = hidden.shape[0], hidden.shape[1]
    if mask is None:
        return hidden.new_ones(bsz, width)
    if mask.dim() == 4:
        row = mask[:, 0, 0, :]
        keep = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
    elif mask.dim() == 2:
        keep = mask.bool() if mask.dtype != torch.bool else mask
    else:
        raise ValueError(f"attention mask must be 2-D or 4-D, got {mask.dim()}-D")
    if keep.shape[-1] < width:
        raise ValueError(f"attention mask covers {keep.shape[-1]} positions, input has {width}")
    return keep[:, -width:].to(hidden.dtype)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, H) mean of ``hidden`` (B, T, H) over the tokens ``mask`` keeps (see
    :func:`_keep_weights`), as sentence-transformers computes it (count clamped at 1e-9).

    Raises:
        ValueError: a mask of another rank, or narrower than the input.
    """
    w = _keep_weights(mask, hidden)
    summed = torch.einsum("bth,bt->bh", hidden, w)
    return summed / w.sum(dim=1, keepdim=True).clamp(min=1e-9)


def _loss(config: Any, num_labels: int, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss transformers' sequence classifiers take (regression, single or multi label)."""
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class MeanPooledBertForSequenceClassification(  # type: ignore[no-untyped-call]
    BertForSequenceClassification
):
    """BERT sequence classifier whose Linear head reads the masked mean of the last hidden
    states; the backbone has no pooler (its weights in a checkpoint are left unused)."""

    _keys_to_ignore_on_load_unexpected = [r"pooler\."]  # noqa: RUF012 (transformers' hook)

    def __init__(self, config: Any) -> None:
        # BertForSequenceClassification.__init__ would build (and initialise) a pooler.
        BertPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()  # type: ignore[no-untyped-call]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput | tuple[Any, ...]:
        # Always a dict from the backbone; a tuple out only if asked (as transformers does).
        return_dict = kwargs.pop("return_dict", None)
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        pooled = masked_mean(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else _loss(self.config, logits.shape[-1], logits, labels)
        out = SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return out.to_tuple() if return_dict is False else out


#: Mean-pooled sequence classifier per ``config.model_type``.
MEAN_POOLED_CLASSES: MappingProxyType[str, type[PreTrainedModel]] = MappingProxyType(
    {"bert": MeanPooledBertForSequenceClassification}
)

"""Turn examples into padded model inputs.

Classification: ``input_ids``, ``attention_mask`` and integer ``labels``.
Instruction tuning: the prompt (through the tokenizer's chat template when it has one) is
followed by the response and an end-of-sequence token; ``labels`` copy the response tokens
and hold -100 (ignored by the loss) on the prompt and on padding, so the model learns the
response only. Padding is on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from secagg.models.data import ClassificationData, Dataset, InstructionData
from secagg.models.text import TextData, text_batch

__all__ = ["IGNORE_INDEX", "classification_batch", "instruction_batch", "make_batch"]

IGNORE_INDEX = -100


def classification_batch(
    tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *, max_length: int
) -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` (truncated to ``max_length``, padded to the longest) with labels."""
    enc = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.as_tensor(np.asarray(labels), dtype=torch.long),
    }


def _prompt_text(tokenizer: Any, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return str(text)
    return prompt + "\n"


def instruction_batch(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], *, max_length: int
) -> dict[str, torch.Tensor]:
    """Tokenise prompt + response pairs into at most ``max_length`` tokens each.

    When a pair is too long, the prompt loses tokens from its start (its end, next to the
    response, matters most) and the response from its end; at least half the budget is kept
    for the response, so every row has response tokens to learn from.
    """
    eos = tokenizer.eos_token or ""
    rows: list[tuple[list[int], list[int]]] = []
    for prompt, response in zip(prompts, responses, strict=True):
        p_ids = tokenizer(_prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response + eos, add_special_tokens=False)["input_ids"]
        r_keep = min(len(r_ids), max(max_length - len(p_ids), max_length // 2))
        p_keep = max_length - r_keep
        p_ids = p_ids[-p_keep:] if p_keep > 0 else []
        rows.append((p_ids, r_ids[:r_keep]))
    width = max(len(p) + len(r) for p, r in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (p_ids, r_ids) in enumerate(rows):
        n_p, n = len(p_ids), len(p_ids) + len(r_ids)
        input_ids[i, :n] = torch.tensor(p_ids + r_ids, dtype=torch.long)
        attention[i, :n] = 1
        labels[i, n_p:n] = torch.tensor(r_ids, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def make_batch(
    tokenizer: Any, data: Dataset, indices: npt.NDArray[np.int64], *, max_length: int
) -> dict[str, torch.Tensor]:
    """The model inputs for ``data`` at ``indices``.

    Raises:
        TypeError: ``data`` is not ClassificationData, InstructionData or TextData.
    """
    idx = [int(i) for i in indices]
    if isinstance(data, ClassificationData):
        return classification_batch(
            tokenizer,
            [data.texts[i] for i in idx],
            data.labels[idx].tolist(),
            max_length=max_length,
        )
    if isinstance(data, InstructionData):
        return instruction_batch(
            tokenizer,
            [data.prompts[i] for i in idx],
            [data.responses[i] for i in idx],
            max_length=max_length,
        )
    if isinstance(data, TextData):
        return text_batch(tokenizer, [data.texts[i] for i in idx], max_length=max_length)
    raise TypeError(f"unsupported data set type {type(data).__name__}")

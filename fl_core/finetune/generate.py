"""Greedy generations of a causal LM on hold-out prompts (shown before and after training)."""

from __future__ import annotations

from typing import Any

import torch

from secagg.models import AdaptedModel, Dataset, InstructionData
from secagg.models.batching import _prompt_text

__all__ = ["sample_generations"]


@torch.no_grad()
def sample_generations(model: AdaptedModel, data: Dataset, count: int, *,
                       max_new_tokens: int = 40) -> list[dict[str, str]]:
    """Up to ``count`` greedy answers to the first prompts of ``data`` (instruction data only;
    an empty list otherwise): ``prompt``, ``reference`` and ``output``."""
    if not isinstance(data, InstructionData) or count == 0:
        return []
    tok, net = model.tokenizer, model.model
    gen: Any = net.generate  # transformers' GenerationMixin (untyped)
    net.eval()
    out: list[dict[str, str]] = []
    for prompt, reference in list(zip(data.prompts, data.responses, strict=True))[:count]:
        enc = tok(_prompt_text(tok, prompt), return_tensors="pt").to(model.device)
        ids = gen(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
        text = tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out.append({"prompt": prompt, "reference": reference, "output": text.strip()})
    return out

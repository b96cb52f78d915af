"""The real model most models/ tests start from: pretrained MiniLM with a fresh 2-way head."""

from __future__ import annotations

from secagg.models import AdaptedModel, AdapterConfig, TaskKind, build_model


def minilm(adapter: AdapterConfig | None = None, *, num_labels: int = 2) -> AdaptedModel:
    """MiniLM for classification with ``adapter`` (LoRA by default), initialised with seed 0."""
    return build_model("minilm", task=TaskKind.CLASSIFICATION, num_labels=num_labels,
                       adapter=adapter or AdapterConfig.lora(), init_seed=0)

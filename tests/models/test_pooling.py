"""The head on mean-pooled token features: chosen by the model, computed as specified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from secagg.models import (
    AdapterConfig,
    ClassificationData,
    Pooling,
    TaskKind,
    UnsupportedModelError,
    build_model,
    default_pooling,
    load_model,
    make_batch,
    minilm_folder,
)
from secagg.models.adapted import AdaptedModel
from secagg.models.pooling import MeanPooledBertForSequenceClassification, masked_mean
from tests.models._build import minilm as build_minilm


@pytest.fixture(scope="module")
def mean3() -> AdaptedModel:
    m = build_minilm(num_labels=3)
    vec = m.get_vector()  # LoRA B off zero: the backbone's LoRA path is live too
    m.set_vector(vec + 0.01 * np.random.default_rng(2).standard_normal(vec.size).astype(np.float32))
    return m


def _sentence_transformers_folder(tmp: Path, pooling: dict[str, bool]) -> Path:
    (tmp / "1_Pooling").mkdir(parents=True)
    st = "sentence_transformers.models."
    (tmp / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": st + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": st + "Pooling"},
    ]))
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return tmp


def test_minilm_is_mean_pooled_by_default(mean3: AdaptedModel) -> None:
    assert default_pooling(minilm_folder()) is Pooling.MEAN
    assert mean3.pooling is Pooling.MEAN
    assert isinstance(mean3.model.get_base_model(), MeanPooledBertForSequenceClassification)
    assert dict(mean3.spec.meta)["pooling"] == "mean"
    # The unused pooler is not built (nor fingerprinted); the head is still one Linear.
    names = [n for n, _ in mean3.model.named_parameters()]
    assert not any(".pooler." in n for n in names)
    head = mean3.model.get_base_model().classifier.modules_to_save["default"]  # PEFT's copy
    assert isinstance(head, torch.nn.Linear) and head.weight.requires_grad


def test_default_pooling_reads_the_sentence_transformers_config(tmp_path: Path) -> None:
    assert default_pooling(tmp_path) is Pooling.POOLER  # no modules.json: a plain HF folder
    mean = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
    assert default_pooling(_sentence_transformers_folder(tmp_path / "a", mean)) is Pooling.MEAN
    both = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}
    assert default_pooling(_sentence_transformers_folder(tmp_path / "b", both)) is Pooling.POOLER
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "modules.json").write_text("{not json")
    assert default_pooling(tmp_path / "c") is Pooling.POOLER


def test_logits_are_the_masked_mean_times_w_plus_b(
    mean3: AdaptedModel, movie_small: ClassificationData
) -> None:
    """By hand: mean of the last hidden states over each example's real tokens, @ W.T + b."""
    m = mean3
    m.model.eval()
    idx = np.array([0, 5, 9, 17], dtype=np.int64)
    batch = make_batch(m.tokenizer, movie_small, idx, max_length=64)
    keep = batch["attention_mask"]
    assert (keep.sum(dim=1) < keep.shape[1]).any(), "the batch must contain padding"
    base = m.model.get_base_model()
    with torch.no_grad():
        logits = m.model(input_ids=batch["input_ids"], attention_mask=keep).logits
        hidden = base.bert(input_ids=batch["input_ids"], attention_mask=keep).last_hidden_state
    state = m.state_dict()
    w = next(v for k, v in state.items() if k.endswith("classifier.weight")).double().numpy()
    b = next(v for k, v in state.items() if k.endswith("classifier.bias")).double().numpy()
    h = hidden.double().numpy()
    for row in range(len(idx)):
        tokens = [t for t in range(h.shape[1]) if keep[row, t] == 1]
        pooled = sum(h[row, t] for t in tokens) / len(tokens)
        np.testing.assert_allclose(logits[row].double().numpy(), pooled @ w.T + b,
                                   rtol=1e-5, atol=1e-5)
        # Padding does not leak in: the example alone gives the same logits.
        with torch.no_grad():
            alone = m.model(input_ids=batch["input_ids"][row : row + 1, : len(tokens)],
                            attention_mask=keep[row : row + 1, : len(tokens)]).logits
        np.testing.assert_allclose(alone[0].numpy(), logits[row].numpy(), rtol=1e-4, atol=1e-5)


def test_masked_mean_reads_2d_wide_and_4d_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 4, 3, generator=gen)
    keep = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    want = torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
    torch.testing.assert_close(masked_mean(hidden, keep), want)
    # prefix tuning: 3 always-visible KV positions in front of the tokens
    torch.testing.assert_close(masked_mean(hidden, torch.cat([torch.ones(2, 3), keep], 1)), want)
    neg = torch.finfo(torch.float32).min
    additive = ((1.0 - keep.float())[:, None, None, :] * neg).expand(-1, 1, 4, -1)
    torch.testing.assert_close(masked_mean(hidden, additive), want)
    torch.testing.assert_close(masked_mean(hidden, None), hidden.mean(1))
    with pytest.raises(ValueError, match="3-D"):
        masked_mean(hidden, keep[:, None, :])
    with pytest.raises(ValueError, match="covers 2"):
        masked_mean(hidden, keep[:, :2])


def test_pooler_stays_available_and_changes_the_digest(mean3: AdaptedModel) -> None:
    pooler = build_model("minilm", task=TaskKind.CLASSIFICATION, num_labels=3,
                         adapter=AdapterConfig.lora(), init_seed=0, pooling=Pooling.POOLER)
    assert pooler.pooling is Pooling.POOLER
    assert type(pooler.model.get_base_model()).__name__ == "BertForSequenceClassification"
    assert pooler.spec.names == mean3.spec.names and pooler.spec.size == mean3.spec.size
    assert pooler.spec.digest != mean3.spec.digest


def test_pooling_argument_is_validated() -> None:
    with pytest.raises(TypeError, match="Pooling"):
        load_model("minilm", task=TaskKind.CLASSIFICATION, num_labels=2,
                   pooling="mean")  # type: ignore[arg-type]
    with pytest.raises(UnsupportedModelError, match="no pooling"):
        load_model("minilm", task=TaskKind.CAUSAL_LM, pooling=Pooling.MEAN)


@pytest.mark.parametrize(
    "adapter",
    [AdapterConfig.prefix(num_virtual_tokens=4), AdapterConfig.prompt(num_virtual_tokens=4)],
    ids=["prefix", "prompt"],
)
def test_prefix_and_prompt_heads_ignore_padding(adapter: AdapterConfig) -> None:
    """The mask the head reads lines up with the hidden states when virtual tokens are added
    (prefix: KV positions in front of the mask; prompt: embeddings in front of the input)."""
    m = build_minilm(adapter)
    assert m.pooling is Pooling.MEAN
    vec = m.get_vector()
    m.set_vector(vec + 0.1 * np.random.default_rng(3).standard_normal(vec.size).astype(np.float32))
    m.model.eval()
    ids = m.tokenizer(["a fine film", "dull and far too long for its own good"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        both = m.model(**ids).logits
        short = m.tokenizer(["a fine film"], return_tensors="pt")
        alone = m.model(**short).logits
        as_tuple = m.model(**ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], both, rtol=0, atol=0)
    torch.testing.assert_close(alone[0], both[0], rtol=1e-4, atol=1e-5)

"""Prefix tuning on every transformers release: the KV-cache argument name, and real learning.

transformers 5.24 renamed the forward argument ``past_key_values`` to ``cache``; PEFT 0.21.2's
prefix tuning then raises for classifiers and leans on a deprecated alias for causal LMs.
These tests hold on either side of the rename (the locked 5.23 and 5.25).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version
from peft import (
    LoraConfig,
    PeftModelForCausalLM,
    PeftModelForSequenceClassification,
    PrefixTuningConfig,
    TaskType,
)

from secagg.models import (
    AdaptedModel,
    AdapterConfig,
    ClassificationData,
    InstructionData,
    Pooling,
    TaskKind,
    TrainConfig,
    UnsupportedModelError,
    build_model,
    evaluate,
    load_packaged,
    make_batch,
    train_local,
)
from secagg.models.prefix import (
    PrefixTunedForCausalLM,
    PrefixTunedForSequenceClassification,
    cache_argument,
    prefix_tuning_model,
)

RENAMED = Version(transformers.__version__) >= Version("5.24.0.dev0")
EXPECTED_ARGUMENT = "cache" if RENAMED else "past_key_values"


@pytest.fixture(scope="module")
def minilm_prefix() -> AdaptedModel:
    m = build_model(
        "minilm",
        task=TaskKind.CLASSIFICATION,
        num_labels=2,
        adapter=AdapterConfig.prefix(num_virtual_tokens=4),
        init_seed=0,
    )
    m.model.eval()
    return m


def _with_prefix(m: AdaptedModel, prefix: torch.Tensor) -> None:
    m.load_state_dict({**m.state_dict(), "prompt_embeddings": prefix})


def test_minilm_uses_the_argument_name_of_the_installed_release(
    minilm_prefix: AdaptedModel,
) -> None:
    model = minilm_prefix.model
    assert isinstance(model, PrefixTunedForSequenceClassification)
    assert model.cache_argument == EXPECTED_ARGUMENT
    # BERT's classifier forward takes neither name; the backbone BertModel decides.
    assert cache_argument(model.get_base_model().bert) == EXPECTED_ARGUMENT


def test_minilm_prefix_matches_peft_wherever_peft_works() -> None:
    # PEFT's own prefix forward calls the backbone and feeds its pooler output to the head
    # itself: comparable only for the pooler head (MiniLM's default reads a mean instead).
    pooler = build_model("minilm", task=TaskKind.CLASSIFICATION, num_labels=2,
                         adapter=AdapterConfig.prefix(num_virtual_tokens=4), init_seed=0,
                         pooling=Pooling.POOLER)
    pooler.model.eval()
    model = pooler.model
    ids = pooler.tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**ids).logits
        try:
            theirs = PeftModelForSequenceClassification.forward(model, **ids).logits
        except ValueError as exc:  # the bug worked around: PEFT 0.21.2 on transformers >= 5.24
            assert "past key values" in str(exc)
            assert RENAMED
        else:
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        as_tuple = model(**ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], ours, rtol=0, atol=0)


def test_minilm_prefix_conditions_the_logits(minilm_prefix: AdaptedModel) -> None:
    m = minilm_prefix
    ids = m.tokenizer(["a fine film", "a dull plot"], padding=True, return_tensors="pt")
    start = m.state_dict()["prompt_embeddings"].clone()
    try:
        with torch.no_grad():
            without = m.model.get_base_model()(**ids).logits
            before = m.model(**ids).logits
            _with_prefix(m, torch.randn(start.shape, generator=torch.Generator().manual_seed(3)))
            after = m.model(**ids).logits
    finally:
        _with_prefix(m, start)
    assert not torch.allclose(before, without)  # the prefix reaches the model at all
    assert not torch.allclose(before, after)  # and the trained weights are the ones it reads


def test_minilm_prefix_alone_learns(
    minilm_prefix: AdaptedModel, movie_small: ClassificationData
) -> None:
    m = minilm_prefix
    start = {k: v.clone() for k, v in m.state_dict().items()}
    batch = make_batch(m.tokenizer, movie_small, np.arange(len(movie_small)), max_length=32)
    opt = torch.optim.Adam(m.model.prompt_encoder.parameters(), lr=0.05)
    losses = []
    try:
        for _ in range(6):
            loss = m.model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        after = m.state_dict()
        assert not torch.equal(after["prompt_embeddings"], start["prompt_embeddings"])
        head = "base_model.classifier.weight"
        assert torch.equal(after[head], start[head])  # only the prefix was trained
    finally:
        m.load_state_dict(start)
    assert losses[-1] < losses[0] - 0.01, losses


def test_forward_refuses_a_model_that_ignores_the_prefix(minilm_prefix: AdaptedModel) -> None:
    """What a removed alias would look like: the keyword lands in **kwargs and is dropped."""
    model = minilm_prefix.model
    ids = minilm_prefix.tokenizer(["a fine film"], return_tensors="pt")
    model.cache_argument = "no_such_argument"
    try:
        with pytest.raises(UnsupportedModelError, match="ignored the prefix"), torch.no_grad():
            model(input_ids=ids["input_ids"])
    finally:
        model.cache_argument = EXPECTED_ARGUMENT


def test_forward_validates_its_inputs(minilm_prefix: AdaptedModel) -> None:
    model = minilm_prefix.model
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        model()
    ids = torch.tensor([[101, 2204, 102]])
    with pytest.raises(ValueError, match="2-D"):
        model(input_ids=ids, attention_mask=torch.ones(1, 1, 3, 3))


class _NoCache(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids


class _Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _NoCache()

    @property
    def base_model(self) -> torch.nn.Module:
        return self.body

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return self.body(input_ids)


def test_cache_argument_refuses_models_without_a_kv_cache() -> None:
    with pytest.raises(UnsupportedModelError, match="_NoCache"):
        cache_argument(_NoCache())
    with pytest.raises(UnsupportedModelError, match="_Head -> _NoCache"):
        cache_argument(_Head())
    with pytest.raises(TypeError):
        cache_argument("bert")  # type: ignore[arg-type]


def test_prefix_tuning_model_checks_config_and_task() -> None:
    with pytest.raises(TypeError):
        prefix_tuning_model(_NoCache(), LoraConfig(task_type=TaskType.SEQ_CLS))  # type: ignore[arg-type]
    token_cls = PrefixTuningConfig(task_type=TaskType.TOKEN_CLS, num_virtual_tokens=2)
    with pytest.raises(UnsupportedModelError, match="TOKEN_CLS"):
        prefix_tuning_model(_NoCache(), token_cls)  # type: ignore[arg-type]
    seq_cls = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=2)
    with pytest.raises(UnsupportedModelError, match="KV cache"):
        prefix_tuning_model(_NoCache(), seq_cls)  # type: ignore[arg-type]


@pytest.mark.slow
def test_smollm2_prefix_round_trips_conditions_and_learns() -> None:
    m = build_model(
        "smollm2",
        task=TaskKind.CAUSAL_LM,
        adapter=AdapterConfig.prefix(num_virtual_tokens=4),
        init_seed=0,
    )
    model = m.model
    assert isinstance(model, PrefixTunedForCausalLM)
    assert model.cache_argument == EXPECTED_ARGUMENT
    assert m.num_trainable == m.spec.size == 4 * 30 * 2 * 192  # 30 layers, 3 KV heads x 64
    assert m.spec.names == ("prompt_embeddings",)

    chat = load_packaged("chatterbot")
    assert isinstance(chat, InstructionData)
    client = chat.subset(np.random.default_rng(0).choice(len(chat), 8, replace=False))
    batch = make_batch(m.tokenizer, client, np.arange(len(client)), max_length=32)
    model.eval()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        ours = model(**batch)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    with warnings.catch_warnings(), torch.no_grad():
        # PEFT's own path still works here, on 5.24+ through the deprecated alias.
        warnings.simplefilter("ignore", FutureWarning)
        theirs = PeftModelForCausalLM.forward(model, **batch)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=0, atol=1e-4)

    # Round trip through the flat vector, and the vector is what the forward reads.
    start = m.get_vector()
    vec = np.random.default_rng(1).standard_normal(m.spec.size).astype(np.float32)
    m.set_vector(vec)
    np.testing.assert_array_equal(m.get_vector(), vec)
    with torch.no_grad():
        moved = model(**batch).loss
    m.set_vector(start)
    assert abs(moved.item() - ours.loss.item()) > 1e-3

    before = evaluate(m, client, max_length=32, batch_size=8)
    result = train_local(
        m, client, TrainConfig(steps=3, batch_size=8, learning_rate=1e-2, max_length=32), seed=0
    )
    after = evaluate(m, client, max_length=32, batch_size=8)
    print(f"\nSmolLM2 prefix ({model.cache_argument}=): loss {before.loss:.3f} -> {after.loss:.3f}")
    assert result.update_norm > 0
    assert after.loss < before.loss

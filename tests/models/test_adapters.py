"""Adapter codecs on the real MiniLM: sizes, strict loading, round trips, spec digests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import set_peft_model_state_dict

from secagg.models import (
    AdaptedModel,
    AdapterConfig,
    AdapterConfigError,
    AdapterKind,
    MissingKeysError,
    ShapeMismatchError,
    TaskKind,
    UnexpectedKeysError,
    UnsupportedModelError,
    build_model,
    get_codec,
    lora_targets,
)


def _minilm(adapter: AdapterConfig, *, seed: int = 0, num_labels: int = 2) -> AdaptedModel:
    return build_model(
        "minilm",
        task=TaskKind.CLASSIFICATION,
        num_labels=num_labels,
        adapter=adapter,
        init_seed=seed,
    )


@pytest.fixture(scope="module")
def lora() -> AdaptedModel:
    return _minilm(AdapterConfig.lora())


def test_lora_on_minilm_has_about_75k_trainable_values(lora: AdaptedModel) -> None:
    # 6 layers x (query, value) x (A: 8x384 + B: 384x8) + classifier 2x384 + 2.
    assert lora.num_trainable == 6 * 2 * (8 * 384 * 2) + 2 * 384 + 2 == 74_498
    trainable = sum(p.numel() for p in lora.model.parameters() if p.requires_grad)
    assert trainable == lora.num_trainable
    assert all("lora_" in n or "classifier" in n for n in lora.spec.names)
    assert lora.spec.meta_dict()["lora.targets"] == "query,value"


def test_strict_load_rejects_missing_unexpected_and_misshaped(lora: AdaptedModel) -> None:
    before = lora.get_vector()
    state = lora.state_dict()
    name = lora.spec.names[0]
    missing = {k: v.clone() for k, v in state.items() if k != name}
    with pytest.raises(MissingKeysError) as err:
        lora.load_state_dict(missing)
    assert err.value.keys == [name]
    with pytest.raises(UnexpectedKeysError):
        lora.load_state_dict({**state, "base_model.model.bert.pooler.dense.weight": torch.zeros(1)})
    with pytest.raises(ShapeMismatchError):
        lora.load_state_dict({**state, name: state[name].T.contiguous()})
    np.testing.assert_array_equal(lora.get_vector(), before)  # nothing was half-written


def test_peft_alone_would_accept_a_partial_state_dict(lora: AdaptedModel) -> None:
    """Why the codec checks keys itself: PEFT reports but does not refuse a missing key."""
    state = {k: v.clone() for k, v in lora.state_dict().items()}
    lora_key = next(k for k in state if "lora_A" in k)
    del state[lora_key]
    result = set_peft_model_state_dict(lora.model, state)
    assert any("lora_A" in k for k in result.missing_keys)  # no exception was raised


@pytest.mark.parametrize(
    ("adapter", "size"),
    [
        (AdapterConfig.lora(), 74_498),
        (AdapterConfig.prefix(num_virtual_tokens=4), 4 * 6 * 2 * 384 + 770),
        (AdapterConfig.prompt(num_virtual_tokens=4), 4 * 384 + 770),
    ],
    ids=["lora", "prefix", "prompt"],
)
def test_codecs_round_trip_a_random_vector(adapter: AdapterConfig, size: int) -> None:
    m = _minilm(adapter)
    assert m.num_trainable == size
    vec = np.random.default_rng(1).standard_normal(m.spec.size).astype(np.float32)
    m.set_vector(vec)
    np.testing.assert_array_equal(m.get_vector(), vec)
    # The written weights are the ones the forward pass uses.
    ids = m.tokenizer(["a fine film"], return_tensors="pt")
    with torch.no_grad():
        out1 = m.model(**ids).logits
        m.set_vector(np.zeros(m.spec.size, dtype=np.float32))
        out2 = m.model(**ids).logits
    assert not torch.allclose(out1, out2)


def test_apply_update_adds() -> None:
    m = _minilm(AdapterConfig.prompt(num_virtual_tokens=2))
    w = m.get_vector()
    delta = np.full(m.spec.size, 0.25, dtype=np.float64)
    m.apply_update(delta)
    np.testing.assert_allclose(m.get_vector(), w + np.float32(0.25), rtol=0, atol=1e-6)


def test_full_fine_tuning_covers_every_weight() -> None:
    m = _minilm(AdapterConfig.full())
    total = sum(p.numel() for p in m.model.parameters())
    # 22,713,986 less BERT's pooler (384 x 384 + 384), which the mean-pooled head does not use
    assert m.num_trainable == total == 22_713_986 - 147_840
    assert get_codec(AdapterKind.FULL).suggested_chunk_values == 1 << 22
    chunks = m.spec.chunk_slices(1 << 22)
    assert len(chunks) == 6 and chunks[-1].stop == m.spec.size
    vec = m.get_vector()
    vec[chunks[2]] += 1.0
    m.set_vector(vec)
    np.testing.assert_array_equal(m.get_vector(), vec)
    with pytest.raises(UnexpectedKeysError):
        m.load_state_dict({**m.state_dict(), "extra": torch.zeros(1)})


def test_digest_is_stable_and_differs_across_configs(lora: AdaptedModel) -> None:
    again = _minilm(AdapterConfig.lora())
    assert again.spec.digest == lora.spec.digest
    np.testing.assert_array_equal(again.get_vector(), _minilm(AdapterConfig.lora()).get_vector())
    others = {
        "r": _minilm(AdapterConfig.lora(r=4)),
        "alpha": _minilm(AdapterConfig.lora(alpha=32)),  # same shapes, different meaning
        "targets": _minilm(AdapterConfig.lora(target_modules=("query", "key", "value"))),
        "prefix": _minilm(AdapterConfig.prefix()),
        "prompt": _minilm(AdapterConfig.prompt()),
        "seed": _minilm(AdapterConfig.lora(), seed=1),
        "labels": _minilm(AdapterConfig.lora(), num_labels=3),
    }
    digests = {k: m.spec.digest for k, m in others.items()}
    assert lora.spec.digest not in digests.values()
    assert len(set(digests.values())) == len(digests)
    assert others["alpha"].spec.tensors == lora.spec.tensors  # only the metadata differs


def test_adapter_config_validation_and_targets() -> None:
    with pytest.raises(AdapterConfigError):
        AdapterConfig.lora(r=0)
    with pytest.raises(AdapterConfigError):
        AdapterConfig.lora(dropout=1.0)
    with pytest.raises(AdapterConfigError):
        AdapterConfig.lora(target_modules=())
    with pytest.raises(AdapterConfigError):
        AdapterConfig.prompt(num_virtual_tokens=0)
    with pytest.raises(TypeError):
        get_codec("lora")  # type: ignore[arg-type]
    assert lora_targets("bert") == ("query", "value")
    assert lora_targets("llama") == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert lora_targets("gpt2") == ("c_attn",)
    with pytest.raises(UnsupportedModelError):
        lora_targets("no-such-architecture")
    with pytest.raises(AdapterConfigError):
        get_codec(AdapterKind.FULL).wrap(None, AdapterConfig.lora())  # type: ignore[arg-type]

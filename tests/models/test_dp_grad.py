"""clipped_grad_sum against a naive per-example loop on real MiniLM + LoRA and real movie data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secagg.models import (
    AdapterConfig,
    ClassificationData,
    Pooling,
    TaskKind,
    build_model,
    load_packaged,
    make_batch,
)
from secagg.models.adapted import AdaptedModel
from secagg.models.dp_grad import clipped_grad_sum, per_example_loss, poisson_indices, trainables


@pytest.fixture(scope="module", params=[Pooling.MEAN, Pooling.POOLER], ids=lambda p: p.value)
def minilm(request: pytest.FixtureRequest) -> AdaptedModel:
    """LoRA MiniLM with each head: on mean-pooled features (the default) and on the pooler."""
    m = build_model("minilm", task=TaskKind.CLASSIFICATION, num_labels=2,
                    adapter=AdapterConfig.lora(), init_seed=0, pooling=request.param)
    assert m.pooling is request.param
    # Move LoRA B off zero so every trainable tensor has a non-trivial gradient.
    gen = np.random.default_rng(1)
    vec = m.get_vector()
    m.set_vector(vec + 0.01 * gen.standard_normal(vec.size).astype(np.float32))
    return m


def _naive(m: AdaptedModel, data: ClassificationData, idx: np.ndarray) -> np.ndarray:
    """Per example: forward alone, backward, read grads in spec order (rows)."""
    m.model.eval()
    params = [p for _, p in trainables(m)]
    rows = []
    for i in idx:
        batch = make_batch(m.tokenizer, data, np.array([i]), max_length=64)
        loss = per_example_loss(m, batch, torch.device("cpu"))[0]
        grads = torch.autograd.grad(loss, params)
        rows.append(np.concatenate([g.reshape(-1).double().numpy() for g in grads]))
    return np.stack(rows)


def test_matches_naive_loop_with_partial_clipping(
    minilm: AdaptedModel, movie_small: ClassificationData
) -> None:
    idx = np.arange(12, dtype=np.int64)
    rows = _naive(minilm, movie_small, idx)
    norms = np.linalg.norm(rows, axis=1)
    clip = float(np.median(norms))  # clips about half of them
    expected = (rows * np.minimum(1.0, clip / norms)[:, None]).sum(axis=0)
    before = minilm.get_vector()
    got = clipped_grad_sum(minilm, movie_small, idx, clip=clip, chunk=5)
    assert got.vector.shape == (minilm.spec.size,)
    assert got.count == 12
    np.testing.assert_allclose(got.vector, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert got.frac_clipped == pytest.approx(float(np.mean(norms > clip)))
    assert 0 < got.frac_clipped < 1
    assert got.mean_norm == pytest.approx(float(norms.mean()), rel=1e-4)
    np.testing.assert_array_equal(minilm.get_vector(), before)


def test_order_matches_spec_by_finite_difference(
    minilm: AdaptedModel, movie_small: ClassificationData
) -> None:
    """The gradient at one coordinate of the spec vector equals a central difference."""
    idx = np.array([3], dtype=np.int64)
    g = clipped_grad_sum(minilm, movie_small, idx, clip=1e9).vector
    base = minilm.get_vector()
    batch = make_batch(minilm.tokenizer, movie_small, idx, max_length=64)
    k = int(np.argmax(np.abs(g)))
    eps = 1e-2
    losses = []
    for sign in (1.0, -1.0):
        v = base.copy()
        v[k] += sign * eps
        minilm.set_vector(v)
        with torch.no_grad():
            losses.append(float(per_example_loss(minilm, batch, torch.device("cpu"))[0]))
    minilm.set_vector(base)
    fd = (losses[0] - losses[1]) / (2 * eps)
    assert fd == pytest.approx(g[k], rel=2e-2)


def test_empty_indices_and_poisson(minilm: AdaptedModel, movie_small: ClassificationData) -> None:
    empty = clipped_grad_sum(minilm, movie_small, np.array([], dtype=np.int64), clip=1.0)
    assert empty.count == 0 and not empty.vector.any() and empty.vector.size == minilm.spec.size
    u = np.array([0.05, 0.5, 0.2, 0.9], dtype=np.float64)
    assert poisson_indices(4, 0.3, lambda n: u[:n]).tolist() == [0, 2]
    with pytest.raises(ValueError):
        poisson_indices(4, 1.5, lambda n: u[:n])
    with pytest.raises(ValueError):
        clipped_grad_sum(minilm, movie_small, np.array([0]), clip=0.0)


@pytest.mark.slow
def test_causal_lm_matches_naive_loop() -> None:
    """SmolLM2 (real weights, small LoRA) on real chatterbot pairs: the instruction path."""
    m = build_model(
        "smollm2",
        task=TaskKind.CAUSAL_LM,
        adapter=AdapterConfig.lora(r=2, target_modules=("q_proj",)),
        init_seed=0,
        fingerprint_base=False,
    )
    vec = m.get_vector()
    m.set_vector(vec + 0.01 * np.random.default_rng(0).standard_normal(vec.size).astype(np.float32))
    data = load_packaged("chatterbot")
    idx = np.arange(4, dtype=np.int64)
    params = [p for _, p in trainables(m)]
    m.model.eval()
    rows = []
    for i in idx:
        batch = make_batch(m.tokenizer, data, np.array([i]), max_length=32)
        grads = torch.autograd.grad(per_example_loss(m, batch, torch.device("cpu"))[0], params)
        rows.append(np.concatenate([g.reshape(-1).double().numpy() for g in grads]))
    per = np.stack(rows)
    norms = np.linalg.norm(per, axis=1)
    clip = float(np.median(norms))
    expected = (per * np.minimum(1.0, clip / norms)[:, None]).sum(axis=0)
    got = clipped_grad_sum(m, data, idx, clip=clip, max_length=32)
    np.testing.assert_allclose(got.vector, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert got.frac_clipped == pytest.approx(float(np.mean(norms > clip)))

"""Local DP-SGD on real MiniLM + LoRA and real movie sentences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from secagg.models import ClassificationData, evaluate, make_batch
from secagg.models.adapted import AdaptedModel
from secagg.models.dp_grad import trainables
from secagg.models.dp_train import DpSgdConfig, train_local_dp
from secagg.models.errors import AdapterConfigError
from tests.models._build import minilm as build_minilm


@pytest.fixture(scope="module")
def minilm() -> AdaptedModel:
    return build_minilm()


def _uniform(seed: int):  # type: ignore[no-untyped-def]
    # Tests only: a seeded source so the sampled batch can be replayed (fl_core passes a CSPRNG).
    gen = np.random.default_rng(seed)
    return lambda n: gen.random(n)


def _zero_noise(d: int, std: float) -> NDArray[np.float64]:
    return np.zeros(d)


def test_no_noise_huge_clip_is_sgd_on_the_sampled_batch(
    minilm: AdaptedModel, movie_small: ClassificationData
) -> None:
    start = minilm.get_vector()
    q, lr = 0.25, 0.1
    cfg = DpSgdConfig(
        steps=1, sample_rate=q, clip=1e9, noise_std=0.0, learning_rate=lr, optimizer="sgd"
    )
    res = train_local_dp(minilm, movie_small, cfg, uniform=_uniform(7), gaussian=_zero_noise)
    idx = np.flatnonzero(_uniform(7)(len(movie_small)) < q)
    assert res.examples_seen == len(idx) > 0
    # Plain SGD on the batch's mean loss, rescaled by |B| / (q n) (the expected batch size).
    minilm.set_vector(start)
    minilm.model.eval()
    batch = make_batch(minilm.tokenizer, movie_small, idx, max_length=64)
    params = [p for _, p in trainables(minilm)]
    grads = torch.autograd.grad(minilm.model(**batch).loss, params)
    grad = np.concatenate([g.reshape(-1).numpy() for g in grads])
    expected = -lr * grad * len(idx) / (q * len(movie_small))
    np.testing.assert_allclose(res.update, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_noise_callable_is_used(minilm: AdaptedModel, movie_small: ClassificationData) -> None:
    start = minilm.get_vector()
    d, q, lr, n = minilm.spec.size, 0.25, 0.1, len(movie_small)
    calls: list[tuple[int, float]] = []
    spike = np.zeros(d)
    spike[5] = 3.0

    def spy(size: int, std: float) -> NDArray[np.float64]:
        calls.append((size, std))
        return spike

    cfg = DpSgdConfig(
        steps=1, sample_rate=q, clip=1e9, noise_std=0.5, learning_rate=lr, optimizer="sgd"
    )
    noisy = train_local_dp(minilm, movie_small, cfg, uniform=_uniform(3), gaussian=spy)
    minilm.set_vector(start)
    clean = train_local_dp(minilm, movie_small, cfg, uniform=_uniform(3), gaussian=_zero_noise)
    minilm.set_vector(start)
    assert calls == [(d, 0.5)]
    diff = noisy.update.astype(np.float64) - clean.update
    assert diff[5] == pytest.approx(-lr * 3.0 / (q * n), rel=1e-3)
    assert np.abs(np.delete(diff, 5)).max() < 1e-6


@pytest.mark.slow
def test_loss_decreases_at_small_noise(minilm: AdaptedModel, movie: ClassificationData) -> None:
    start = minilm.get_vector()
    perm = np.random.default_rng(0).permutation(len(movie))
    data, held = movie.subset(perm[:400]), movie.subset(perm[400:528])
    gen = torch.Generator().manual_seed(0)

    def gaussian(size: int, std: float) -> NDArray[np.float64]:
        return (torch.randn(size, generator=gen, dtype=torch.float64) * std).numpy()

    before = evaluate(minilm, held).loss
    cfg = DpSgdConfig(
        steps=20, sample_rate=0.05, clip=1.0, noise_std=0.01, learning_rate=1.0, optimizer="sgd"
    )
    res = train_local_dp(minilm, data, cfg, uniform=_uniform(11), gaussian=gaussian)
    after = evaluate(minilm, held).loss
    minilm.set_vector(start)
    assert len(res.losses) == 20 and res.examples_seen > 0
    # Measured 0.691 -> 0.675 (Adam at this noise made it worse: see DpSgdConfig).
    assert after < before - 0.008, (before, after, res.losses)


def test_config_validation() -> None:
    with pytest.raises(AdapterConfigError):
        DpSgdConfig(steps=1, sample_rate=0.0, clip=1.0, noise_std=1.0)
    with pytest.raises(AdapterConfigError):
        DpSgdConfig(steps=1, sample_rate=0.1, clip=1.0, noise_std=-1.0)

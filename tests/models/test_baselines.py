"""The baselines beside every fine-tuning result (issue 23): majority class and a non-private
linear probe on frozen pretrained features, its L2 strength chosen on training records only."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from secagg.models import AdaptedModel, AdapterConfig, ClassificationData
from secagg.models.baselines import head_features, linear_probe, majority_accuracy
from tests.models._build import minilm


def test_majority_accuracy_known_answers() -> None:
    assert majority_accuracy([0, 1, 1, 2], [1, 1, 0, 2]) == 0.5
    assert majority_accuracy([2, 2, 0, 0], [0, 2, 2, 2]) == 0.25  # tie: the smaller label
    with pytest.raises(ValueError):
        majority_accuracy([], [1])


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    return centers[y] + rng.normal(size=(n, 4)), y


def test_the_probe_learns_separable_classes_and_never_selects_on_the_evaluation_set() -> None:
    x, y = _blobs(600, 0)
    xt, yt = _blobs(300, 1)
    good = linear_probe(x, y, {"test": (xt, yt)}, num_labels=3, seed=0)
    assert good.accuracy["test"] > 0.9 and good.val_accuracy > 0.9
    # the choice is made on the training records alone: scrambled evaluation labels change
    # the reported accuracy, not the chosen L2 strength or the validation figure
    scrambled = linear_probe(x, y, {"test": (xt, (yt + 1) % 3)}, num_labels=3, seed=0)
    assert (scrambled.l2, scrambled.val_accuracy) == (good.l2, good.val_accuracy)
    assert scrambled.accuracy["test"] < 0.1
    with pytest.raises(ValueError, match="validation"):
        linear_probe(x[:1], y[:1], {}, num_labels=3, seed=0)


@pytest.mark.parametrize("adapter", [AdapterConfig.lora(), AdapterConfig.prefix()],
                         ids=["lora", "prefix"])
def test_head_features_are_the_pretrained_ones_whatever_the_adapter(
        movie_small: ClassificationData, adapter: AdapterConfig) -> None:
    """The probe reads the pretrained model's features: a trained adapter (here, LoRA and
    prefix weights set at random) does not change them."""
    model = minilm(adapter)
    before = head_features(model, movie_small, max_length=24)
    assert before.shape == (len(movie_small), 384) and np.isfinite(before).all()
    vec = model.get_vector()
    model.set_vector(vec + np.random.default_rng(0).normal(0, 0.5, vec.shape).astype(np.float32))
    after = head_features(model, movie_small, max_length=24)
    np.testing.assert_allclose(after, before, atol=1e-5)
    with torch.no_grad():  # the control: with the adapter on, the features do move
        moved = _features_with_adapter(model, movie_small)
    assert np.abs(moved - before).max() > 1e-3


def _features_with_adapter(model: AdaptedModel, data: ClassificationData) -> np.ndarray:
    from secagg.models import baselines

    original = baselines._pretrained
    baselines._pretrained = lambda m: (m, contextlib.nullcontext())  # type: ignore[assignment]
    try:
        return head_features(model, data, max_length=24)
    finally:
        baselines._pretrained = original  # type: ignore[assignment]

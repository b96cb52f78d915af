"""Local training on real data with the real MiniLM: the update, the loss, determinism, metrics."""

from __future__ import annotations

import time

import numpy as np
import pytest

from secagg.models import (
    AdaptedModel,
    AdapterConfigError,
    ClassificationData,
    DataFormatError,
    TrainConfig,
    evaluate,
    load_packaged,
    macro_f1,
    train_local,
)
from tests.models._build import minilm as build_minilm

CONFIG = TrainConfig(steps=12, batch_size=8, learning_rate=1e-2, max_length=48)


def _lora() -> AdaptedModel:
    return build_minilm()


def test_lora_steps_move_the_weights_and_cut_the_loss(movie_small: ClassificationData) -> None:
    m = _lora()
    before_vec = m.get_vector()
    before = evaluate(m, movie_small, max_length=48)
    t0 = time.perf_counter()
    result = train_local(m, movie_small, CONFIG, seed=0)
    wall = time.perf_counter() - t0
    after = evaluate(m, movie_small, max_length=48)
    print(
        f"\nLoRA MiniLM: {m.num_trainable} values, {result.seconds / CONFIG.steps:.3f} s/step "
        f"(batch 8, <=48 tokens), loss {before.loss:.3f} -> {after.loss:.3f}, "
        f"accuracy {before.accuracy:.2f} -> {after.accuracy:.2f}, wall {wall:.1f} s"
    )
    assert result.update.dtype == np.float32 and result.update.shape == (m.spec.size,)
    np.testing.assert_array_equal(result.update, m.get_vector() - before_vec)
    assert result.update_norm > 0.1
    assert len(result.losses) == CONFIG.steps and result.examples_seen == 96
    assert before.loss > 0.6  # a fresh head knows nothing
    assert after.loss < before.loss - 0.2
    assert after.accuracy is not None and after.accuracy >= 0.75


def test_same_seed_same_update_other_seed_other_update(movie_small: ClassificationData) -> None:
    short = TrainConfig(steps=2, batch_size=4, learning_rate=1e-3, max_length=32)
    a = train_local(_lora(), movie_small, short, seed=5).update
    b = train_local(_lora(), movie_small, short, seed=5).update
    c = train_local(_lora(), movie_small, short, seed=6).update
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sms_spam_evaluate_reports_accuracy_and_macro_f1() -> None:
    data = load_packaged("sms-spam")
    sample = data.subset(np.random.default_rng(0).choice(len(data), 64, replace=False))
    result = evaluate(_lora(), sample, max_length=32)
    assert result.examples == 64
    assert result.accuracy is not None and 0.0 <= result.accuracy <= 1.0
    assert result.macro_f1 is not None and 0.0 <= result.macro_f1 <= 1.0
    assert result.perplexity is None and np.isfinite(result.loss)


def test_macro_f1_known_values() -> None:
    y = np.array([0, 0, 1, 1, 2], dtype=np.int64)
    assert macro_f1(y, y) == 1.0
    # label 0: tp 2, fp 1 -> 0.8; label 1: tp 1, fn 1 -> 2/3; label 2: fn 1 -> 0
    pred = np.array([0, 0, 1, 0, 1], dtype=np.int64)
    assert macro_f1(y, pred) == pytest.approx((0.8 + 0.5 + 0.0) / 3)


def test_wrong_data_and_bad_config_are_rejected(movie_small: ClassificationData) -> None:
    chat = load_packaged("chatterbot")
    with pytest.raises(DataFormatError, match="causal-lm"):
        train_local(_lora(), chat, CONFIG, seed=0)
    with pytest.raises(DataFormatError, match="labels"):
        evaluate(_lora(), load_packaged("trec"))
    with pytest.raises(TypeError):
        train_local(_lora(), movie_small, CONFIG, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(AdapterConfigError):
        TrainConfig(steps=0)
    with pytest.raises(AdapterConfigError):
        TrainConfig(steps=1, optimizer="lbfgs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CUDA"):
        import torch

        if torch.cuda.is_available():
            raise ValueError("CUDA present: nothing to check")
        train_local(_lora(), movie_small, CONFIG, seed=0, device="cuda")

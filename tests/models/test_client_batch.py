"""client_updates (vmap over clients) against per-client train_local on real MiniLM + LoRA."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from secagg.models import (
    AdapterConfig,
    ClassificationData,
    TrainConfig,
    iid_partition,
    train_local,
)
from secagg.models.adapted import AdaptedModel
from secagg.models.client_batch import client_updates
from secagg.models.errors import AdapterConfigError
from tests.models._build import minilm as build_minilm


@pytest.fixture(scope="module")
def minilm() -> Iterator[AdaptedModel]:
    m = build_minilm()
    # train_local trains with dropout on; zero it so both sides compute the same function.
    for mod in m.model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    yield m


@pytest.mark.parametrize("steps", [1, 2])
def test_matches_train_local_sgd(
    minilm: AdaptedModel, movie_small: ClassificationData, steps: int
) -> None:
    parts = [movie_small.subset(np.arange(c * 8, c * 8 + 8)) for c in range(3)]
    start = minilm.get_vector()
    rows = client_updates(
        minilm, parts, local_steps=steps, batch_size=4, learning_rate=0.5, seed=10
    )
    np.testing.assert_array_equal(minilm.get_vector(), start)
    assert rows.shape == (3, minilm.spec.size) and rows.dtype == np.float32
    for c, part in enumerate(parts):
        cfg = TrainConfig(steps=steps, batch_size=4, learning_rate=0.5, optimizer="sgd")
        ref = train_local(minilm, part, cfg, seed=10 + c).update
        minilm.set_vector(start)
        assert np.abs(ref).max() > 0
        np.testing.assert_allclose(rows[c], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # Different clients, different data: different updates.
    assert not np.allclose(rows[0], rows[1])


def test_rejects_prompt_tuning_and_bad_args(
    minilm: AdaptedModel, movie_small: ClassificationData
) -> None:
    with pytest.raises(TypeError):
        client_updates(
            minilm, [movie_small], local_steps=0, batch_size=4, learning_rate=0.1, seed=0
        )
    prompt = build_minilm(AdapterConfig.prompt())
    with pytest.raises(AdapterConfigError):
        client_updates(
            prompt, [movie_small], local_steps=1, batch_size=4, learning_rate=0.1, seed=0
        )


def test_many_clients_iid(minilm: AdaptedModel, movie: ClassificationData) -> None:
    """40 clients (two vmap groups) give finite, distinct updates; weights unchanged."""
    data = movie.subset(np.arange(400))
    parts = [data.subset(ix) for ix in iid_partition(len(data), num_clients=40, seed=0)]
    start = minilm.get_vector()
    rows = client_updates(minilm, parts, local_steps=1, batch_size=4, learning_rate=0.1, seed=0)
    np.testing.assert_array_equal(minilm.get_vector(), start)
    assert np.isfinite(rows).all()
    assert len({r.tobytes() for r in rows}) == 40

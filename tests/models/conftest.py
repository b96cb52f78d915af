"""Shared fixtures for models/ tests: offline always, small real models and real data."""

from __future__ import annotations

import os

# Set before transformers is imported anywhere: no test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest

from secagg.models import ClassificationData, load_packaged


@pytest.fixture(scope="session")
def movie() -> ClassificationData:
    data = load_packaged("vader-movie")
    assert isinstance(data, ClassificationData)
    return data


@pytest.fixture(scope="session")
def movie_small(movie: ClassificationData) -> ClassificationData:
    """32 real movie sentences, 16 negative and 16 positive, in random order."""
    rng = np.random.default_rng(0)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(movie.labels == c), 16, replace=False) for c in (0, 1)]
    )
    return movie.subset(rng.permutation(idx))

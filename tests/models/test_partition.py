"""Client partitions: exact cover, IID balance, measured Dirichlet label skew, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.models import (
    PartitionError,
    dirichlet_partition,
    iid_partition,
    label_histograms,
    label_skew,
    load_packaged,
)


@pytest.fixture(scope="module")
def trec_labels() -> np.ndarray:
    return load_packaged("trec").labels  # 6 real classes, 5,381 questions


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats inside a client


def test_iid_is_balanced_and_covers_once(trec_labels: np.ndarray) -> None:
    parts = iid_partition(len(trec_labels), num_clients=10, seed=0)
    _assert_exact_cover(parts, len(trec_labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    skew = label_skew(trec_labels, parts)
    assert skew < 0.07, skew


@pytest.mark.parametrize(
    ("alpha", "low", "high"), [(0.1, 0.6, 1.0), (1.0, 0.4, 0.7), (1000.0, 0.0, 0.08)]
)
def test_dirichlet_skew_grows_as_alpha_shrinks(
    trec_labels: np.ndarray, alpha: float, low: float, high: float
) -> None:
    parts = dirichlet_partition(trec_labels, num_clients=10, alpha=alpha, seed=0)
    _assert_exact_cover(parts, len(trec_labels))
    skew = label_skew(trec_labels, parts)
    assert low <= skew <= high, (alpha, skew)


def test_dirichlet_small_alpha_gives_dominant_labels(trec_labels: np.ndarray) -> None:
    parts = dirichlet_partition(trec_labels, num_clients=10, alpha=0.1, seed=1)
    hist = label_histograms(trec_labels, parts)
    top_share = hist.max(axis=1) / hist.sum(axis=1)
    assert np.median(top_share) > 0.8  # the global top class holds 23%
    assert {len(p) for p in parts} <= {538, 539}  # yet every client keeps the IID share


def test_seeded_and_deterministic(trec_labels: np.ndarray) -> None:
    a = dirichlet_partition(trec_labels, num_clients=5, alpha=0.5, seed=7)
    b = dirichlet_partition(trec_labels, num_clients=5, alpha=0.5, seed=7)
    c = dirichlet_partition(trec_labels, num_clients=5, alpha=0.5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert (
        iid_partition(100, num_clients=3, seed=1)[0].tolist()
        == iid_partition(100, num_clients=3, seed=1)[0].tolist()
    )


def test_two_labels_many_clients_no_empty_client() -> None:
    labels = load_packaged("sms-spam").labels  # 2 labels, 12% spam
    parts = dirichlet_partition(labels, num_clients=100, alpha=0.1, seed=0)
    _assert_exact_cover(parts, len(labels))
    assert {len(p) for p in parts} <= {45, 46}
    assert label_skew(labels, parts) > 0.15


def test_errors() -> None:
    with pytest.raises(PartitionError):
        iid_partition(3, num_clients=4, seed=0)
    with pytest.raises(PartitionError):
        iid_partition(3, num_clients=0, seed=0)
    with pytest.raises(TypeError):
        iid_partition(10, num_clients=2, seed=None)  # type: ignore[arg-type]
    labels = np.array([0, 1] * 10)
    with pytest.raises(PartitionError, match="alpha"):
        dirichlet_partition(labels, num_clients=2, alpha=0.0, seed=0)
    with pytest.raises(PartitionError, match="integer"):
        dirichlet_partition(labels.astype(float), num_clients=2, alpha=1.0, seed=0)
    with pytest.raises(PartitionError):
        dirichlet_partition(labels, num_clients=21, alpha=1.0, seed=0)

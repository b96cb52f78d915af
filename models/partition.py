"""Split a data set's examples among clients: IID or label-skewed (Dirichlet).

Every partition covers every example exactly once; each client's indices are sorted. Data
splits are not secrets, so a seeded numpy Generator is used and the seed is an explicit,
required argument: the same seed gives the same split on every machine.

Dirichlet(alpha) skew (Hsu, Qi and Brown 2019): each client's label mix is drawn from
Dir(alpha * global mix), and every client keeps the IID share of examples, so even a two-label
set (SMS spam) splits among many clients without empty ones. Small alpha (0.1) gives clients
dominated by one label; large alpha (1000) approaches IID. :func:`label_skew` measures it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from secagg.models.errors import PartitionError

__all__ = ["dirichlet_partition", "iid_partition", "label_histograms", "label_skew"]

IntArray = npt.NDArray[np.int64]


def _check_common(num_examples: int, num_clients: int, seed: int) -> None:
    for name, value in (
        ("num_examples", num_examples),
        ("num_clients", num_clients),
        ("seed", seed),
    ):
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int")
    if num_clients < 1:
        raise PartitionError(f"num_clients must be >= 1, got {num_clients}")
    if num_examples < num_clients:
        raise PartitionError(f"{num_examples} examples cannot give {num_clients} clients one each")


def iid_partition(num_examples: int, *, num_clients: int, seed: int) -> list[IntArray]:
    """Shuffle the indices and deal them into ``num_clients`` parts whose sizes differ by <= 1.

    Raises:
        TypeError: a non-int argument.
        PartitionError: ``num_clients`` < 1 or more clients than examples.
    """
    _check_common(num_examples, num_clients, seed)
    perm = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, num_clients)]


def dirichlet_partition(
    labels: Sequence[int] | IntArray,
    *,
    num_clients: int,
    alpha: float,
    seed: int,
) -> list[IntArray]:
    """Label-skewed split (Hsu et al. 2019): client i's label mix q_i ~ Dirichlet(alpha * p).

    ``p`` is the global label distribution. Every client gets the IID share of examples
    (sizes differ by at most one), drawn label by label from q_i; when a label runs out, the
    rest of the client's draw is renormalised over the labels still in stock. Clients are
    served in a random order, so which client absorbs the last leftovers is itself random.

    Raises:
        TypeError: a non-int count or seed.
        PartitionError: ``alpha`` <= 0, labels not 1-D integers, or bad counts.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise PartitionError("labels must be a 1-D integer array")
    _check_common(len(y), num_clients, seed)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not alpha > 0:
        raise PartitionError(f"alpha must be a positive number, got {alpha!r}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    prior = counts / counts.sum()
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    used = np.zeros(len(classes), dtype=np.int64)
    sizes = [len(s) for s in np.array_split(np.arange(len(y)), num_clients)]
    parts: list[IntArray] = [np.empty(0, dtype=np.int64)] * num_clients
    for client in rng.permutation(num_clients):
        q = rng.dirichlet(float(alpha) * prior)
        if not np.all(np.isfinite(q)) or q.sum() <= 0:  # every gamma underflowed: alpha -> 0
            q = np.eye(len(classes))[rng.choice(len(classes), p=prior)]
        take = np.zeros(len(classes), dtype=np.int64)
        need = sizes[client]
        while need > 0:
            avail = counts - used - take
            weights = np.where(avail > 0, q, 0.0)
            if weights.sum() <= 0:
                weights = avail.astype(np.float64)
            draw = np.minimum(rng.multinomial(need, weights / weights.sum()), avail)
            take += draw
            need -= int(draw.sum())
        pieces = [pools[c][used[c] : used[c] + take[c]] for c in range(len(classes))]
        used += take
        parts[client] = np.sort(np.concatenate(pieces)).astype(np.int64)
    return parts


def label_histograms(
    labels: Sequence[int] | IntArray, parts: Sequence[IntArray]
) -> npt.NDArray[np.int64]:
    """Counts per (client, label): shape (len(parts), max label + 1)."""
    y = np.asarray(labels, dtype=np.int64)
    k = int(y.max()) + 1 if len(y) else 0
    return np.stack([np.bincount(y[p], minlength=k) for p in parts]).astype(np.int64)


def label_skew(labels: Sequence[int] | IntArray, parts: Sequence[IntArray]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one.

    0 means every client sees the global mix; values near 1 mean clients see disjoint labels.

    Raises:
        PartitionError: a part is empty.
    """
    hist = label_histograms(labels, parts).astype(np.float64)
    sizes = hist.sum(axis=1, keepdims=True)
    if (sizes == 0).any():
        raise PartitionError("label_skew needs non-empty parts")
    total = hist.sum(axis=0)
    global_mix = total / total.sum()
    return float(np.mean(0.5 * np.abs(hist / sizes - global_mix).sum(axis=1)))

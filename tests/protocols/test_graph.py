"""The SecAgg+ neighbour graph: deterministic, symmetric, k-regular, seeded."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.protocols import RoundContext
from secagg.protocols.graph import NeighbourGraph, commitment, graph_seed, round_graph
from tests.protocols.helpers import make_config


@settings(max_examples=50, deadline=None)
@given(m=st.integers(2, 120), data=st.data())
def test_regular_symmetric_and_simple(m: int, data: st.DataObject) -> None:
    members = sorted(data.draw(st.sets(st.integers(0, 10_000), min_size=m, max_size=m)))
    k = data.draw(st.sampled_from([*range(0, m - 1, 2), m - 1, m + 3]))
    g = NeighbourGraph(bytes(range(32)), members, k)
    assert g.degree == min(k, m - 1)
    for u in members:
        nb = g.neighbours(u)
        assert u not in nb and len(nb) == g.degree and nb <= set(members)
        assert all(u in g.neighbours(v) for v in nb)


def test_deterministic_and_seed_dependent() -> None:
    members = list(range(100))
    a = NeighbourGraph(b"\x01" * 32, members, 6)
    b = NeighbourGraph(b"\x01" * 32, list(reversed(members)), 6)
    c = NeighbourGraph(b"\x02" * 32, members, 6)
    assert all(a.neighbours(u) == b.neighbours(u) for u in members)
    assert any(a.neighbours(u) != c.neighbours(u) for u in members)


def test_frozen_layout() -> None:
    # Pin the wiring: a refactor must not silently change who masks with whom.
    g = NeighbourGraph(bytes(range(32)), range(10), 2)
    assert {u: sorted(g.neighbours(u)) for u in range(10)} == {
        0: [1, 8], 1: [0, 3], 2: [5, 6], 3: [1, 5], 4: [6, 7],
        5: [2, 3], 6: [2, 4], 7: [4, 9], 8: [0, 9], 9: [7, 8],
    }


def test_neighbourhoods_look_uniform() -> None:
    # Over many seeds, how often 0 and 1 are neighbours ~ k / (m - 1).
    m, k, trials = 12, 4, 400
    hits = Counter(
        1 in NeighbourGraph(i.to_bytes(32, "big"), range(m), k).neighbours(0)
        for i in range(trials)
    )
    assert abs(hits[True] / trials - k / (m - 1)) < 0.08


def test_round_graph_binds_context_and_every_reveal() -> None:
    cfg = make_config("secagg+", n=30, k=4)
    ctx1 = RoundContext(config=cfg, round_id=1, dim=3, client_ids=range(30))
    ctx2 = RoundContext(config=cfg, round_id=2, dim=3, client_ids=range(30))
    reveals = [(u, bytes([u]) * 32) for u in range(30)]
    assert graph_seed(ctx1, reveals) != graph_seed(ctx2, reveals)
    assert graph_seed(ctx1, reversed(reveals)) == graph_seed(ctx1, reveals)  # canonical order
    changed = [*reveals[:-1], (29, bytes(32))]  # one nonce, or one committer less
    assert graph_seed(ctx1, changed) != graph_seed(ctx1, reveals)
    assert graph_seed(ctx1, reveals[:-1]) != graph_seed(ctx1, reveals)
    with pytest.raises(ValueError):
        graph_seed(ctx1, [*reveals, reveals[0]])
    with pytest.raises(ValueError):
        graph_seed(ctx1, [(0, b"short")])
    g1 = round_graph(ctx1, graph_seed(ctx1, reveals))
    g2 = round_graph(ctx2, graph_seed(ctx2, reveals))
    assert any(g1.neighbours(u) != g2.neighbours(u) for u in range(30))
    assert round_graph(ctx1, graph_seed(ctx1, reveals)) is g1  # cached
    com = commitment(ctx1, 3, bytes(32))
    assert com != commitment(ctx1, 4, bytes(32)) != commitment(ctx2, 3, bytes(32))
    assert len(com) == 32
    assert g1.members == tuple(range(30)) and g1.degree == 4


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        NeighbourGraph(bytes(32), [1, 1, 2], 2)
    with pytest.raises(ValueError):
        NeighbourGraph(bytes(32), range(10), 3)
    with pytest.raises(KeyError):
        NeighbourGraph(bytes(32), range(10), 4).neighbours(99)
    with pytest.raises(KeyError):
        NeighbourGraph(bytes(32), range(3), 4).neighbours(99)

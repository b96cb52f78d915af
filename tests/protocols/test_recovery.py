"""The batched unmask step (:mod:`secagg.protocols.recovery`, :mod:`.holders`,
:mod:`.adjacency`) against the one-secret-at-a-time reference (:mod:`.unmasking`) and against
exact sums: same secrets, same words, same aggregate, for any holder choice and any order."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from secagg import kex, rng, shamir
from secagg.prg import MaskPRG
from secagg.protocols import (
    RoundContext,
    RoundSimulation,
    SecAggConfig,
    ThresholdError,
    labels,
    wire,
)
from secagg.protocols.adjacency import Adjacency
from secagg.protocols.encoding import encode_input
from secagg.protocols.errors import RemoteProtocolError
from secagg.protocols.graph import round_graph
from secagg.protocols.holders import group_by_holders, ring_order
from secagg.protocols.messages import UnmaskResponse
from secagg.protocols.recovery import recover_secrets, strip_masks
from secagg.protocols.transitions import ServerStage
from secagg.protocols.unmasking import SecretRecovery
from tests.protocols.helpers import SOME_SEED, make_config, make_inputs


def _ctx(protocol: str, n: int, dim: int = 50, **kw: object) -> RoundContext:
    cfg = SecAggConfig(protocol=protocol, n=n, **kw)  # type: ignore[arg-type]
    return RoundContext(config=cfg, round_id=3, dim=dim, client_ids=range(n))


# -- ring order -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [60, 200, 777])
def test_ring_order_reads_back_every_window(n: int) -> None:
    g = round_graph(_ctx("secagg+", n), SOME_SEED)
    order = ring_order(g.members, g.neighbours, g.degree)
    assert order is not None and sorted(order) == list(g.members)
    h, pos = g.degree // 2, {u: p for p, u in enumerate(order)}
    for u in g.members:  # each neighbourhood is exactly the window around u in this order
        p = pos[u]
        window = {order[(p + d) % n] for d in range(-h, h + 1) if d}
        assert window == g.neighbours(u), u


def test_ring_order_refuses_what_is_not_a_ring() -> None:
    g = round_graph(_ctx("secagg", 12), SOME_SEED)  # complete graph
    assert ring_order(g.members, g.neighbours, g.degree) is None
    sparse = round_graph(_ctx("secagg+", 60), SOME_SEED)
    members = sparse.members

    def scrambled(u: int) -> frozenset[int]:  # same degree, not a ring
        return frozenset((u + d * 7) % 60 for d in range(1, sparse.degree + 1))

    assert ring_order(members, scrambled, sparse.degree) is None
    assert ring_order(members[:9], sparse.neighbours, sparse.degree) is None  # too small


def test_group_by_holders_shares_sets_in_ring_order() -> None:
    g = round_graph(_ctx("secagg+", 500), SOME_SEED)
    t = 2 * g.degree // 3
    alive = set(g.members) - set(range(0, 500, 20))  # 5% never answer
    holders = {u: sorted((g.neighbours(u) | {u}) & alive) for u in g.members}
    order = ring_order(g.members, g.neighbours, g.degree)
    assert order is not None
    runs = group_by_holders(order, holders, t)
    assert sorted(u for _, owners in runs for u in owners) == list(g.members)
    for used, owners in runs:
        assert len(used) == t == len(set(used))
        assert all(set(used) <= set(holders[u]) for u in owners)
    # ring order shares each set over many secrets; id order almost never does
    assert len(runs) < 500 / 8
    assert len(group_by_holders(g.members, holders, t)) > 500 / 3


def test_group_by_holders_raises_for_a_short_secret() -> None:
    with pytest.raises(ThresholdError) as info:
        group_by_holders([1, 2, 3], {1: [4, 5], 2: [4], 3: [4, 5]}, 2)
    assert info.value.party == 2


# -- reconstruction and mask removal against the reference ------------------------------


def _shared(ctx: RoundContext, owners: list[int], alive: set[int], t: int,
            ) -> tuple[dict[int, bytes], dict[int, list[int]], dict[int, dict[int, bytes]]]:
    """Share one secret per owner among its closed neighbourhood; the alive holders answer."""
    g = round_graph(ctx, SOME_SEED)
    secrets: dict[int, bytes] = {}
    holders: dict[int, list[int]] = {}
    answers: dict[int, dict[int, bytes]] = {h: {} for h in alive}
    for u in owners:
        secrets[u] = rng.random_bytes(32)
        xs = sorted(g.neighbours(u) | {u})
        for x, sh in zip(xs, shamir.split(secrets[u], threshold=t, xs=[x + 1 for x in xs]),
                         strict=True):
            if x in alive:
                answers[x][u] = sh.to_bytes()
        holders[u] = sorted(x for x in xs if x in alive)
    return secrets, holders, answers


@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
def test_recover_secrets_matches_reference_in_any_order(protocol: str) -> None:
    ctx = _ctx(protocol, 120)
    t = ctx.config.threshold
    alive = set(range(120)) - {3, 50, 51, 99}
    secrets, holders, answers = _shared(ctx, list(range(120)), alive, t)
    g = round_graph(ctx, SOME_SEED)
    ref = SecretRecovery(t)
    for order in (ring_order(g.members, g.neighbours, g.degree) or list(g.members),
                  list(g.members), list(reversed(g.members))):
        got = recover_secrets(holders, answers, order, t)
        assert got == secrets
    assert {u: ref.recover(u, {h: int.from_bytes(answers[h][u], "big")
                               for h in holders[u]}) for u in secrets} == secrets


def test_recover_secrets_names_the_owner_of_bad_shares() -> None:
    ctx = _ctx("secagg", 8)
    t = ctx.config.threshold
    secrets, holders, answers = _shared(ctx, list(range(8)), set(range(8)), t)
    h = holders[5][0]
    answers[h][5] = (shamir.PRIME - 1).to_bytes(33, "big")  # pushes the secret past 2^256?
    try:
        got = recover_secrets(holders, answers, list(range(8)), t)
    except RemoteProtocolError as exc:  # detected: the result did not fit 32 bytes
        assert exc.party == 5
    else:  # undetectable in general (module docstring of shamir): then it is wrong
        assert got[5] != secrets[5] and all(got[u] == secrets[u] for u in secrets if u != 5)


def _reference_remove_masks(ctx: RoundContext, acc: npt.NDArray[np.uint32], *,
                            seeds: dict[int, bytes], mask_keys: dict[int, bytes],
                            public_keys: dict[int, bytes],
                            neighbours: Callable[[int], frozenset[int]]) -> int:
    """The unmasking as it was before the batched server (the oracle): one mask at a time."""
    words = 0
    for u, seed in seeds.items():
        MaskPRG(seed, label=labels.self_mask_label(ctx, u)).add_into(acc, bits=32, subtract=True)
        words += len(acc)
    salt = labels.kex_salt(ctx)
    for u, raw in mask_keys.items():
        key = kex.KeyPair.from_private_bytes(raw)
        for v in sorted(neighbours(u) & seeds.keys()):
            pair_seed = kex.agree(key, public_keys[v], salt=salt,
                                  info=labels.kex_info(ctx, labels.PURPOSE_MASK_SEED, u, v))
            MaskPRG(pair_seed, label=labels.pair_mask_label(ctx, u, v)).add_into(
                acc, bits=32, subtract=v < u)
            words += len(acc)
    if ctx.config.bits < 32:
        np.bitwise_and(acc, np.uint32((1 << ctx.config.bits) - 1), out=acc)
    return words


@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
@pytest.mark.parametrize("workers", [1, 2])
def test_strip_masks_equals_one_mask_at_a_time(protocol: str, workers: int) -> None:
    dim = 3000
    ctx = _ctx(protocol, 40, dim=dim)
    g = round_graph(ctx, SOME_SEED)
    keys = {u: kex.KeyPair.generate() for u in g.members}
    public = {u: k.public_bytes() for u, k in keys.items()}
    dropped = [2, 17, 30]
    seeds = {u: rng.random_bytes(32) for u in g.members if u not in dropped}
    mask_keys = {u: keys[u].private_bytes() for u in dropped}
    acc = np.random.default_rng(1).integers(0, 2**32, ctx.vector_length, dtype=np.uint32)
    want, got = acc.copy(), acc.copy()
    n_ref = _reference_remove_masks(ctx, want, seeds=seeds, mask_keys=mask_keys, public_keys=public,
                         neighbours=g.neighbours)
    n_new = strip_masks(ctx, got, seeds=seeds, mask_keys=mask_keys, public_keys=public,
                        neighbours=g.neighbours, workers=workers)
    np.testing.assert_array_equal(got, want)
    assert n_new == n_ref


def test_strip_masks_refuses_a_key_that_was_not_advertised() -> None:
    ctx = _ctx("secagg", 6, dim=8)
    g = round_graph(ctx, SOME_SEED)
    keys = {u: kex.KeyPair.generate() for u in g.members}
    public = {u: k.public_bytes() for u, k in keys.items()}
    acc = np.zeros(8, dtype=np.uint32)
    with pytest.raises(RemoteProtocolError, match="not advertised") as info:
        strip_masks(ctx, acc, seeds={0: bytes(32)}, mask_keys={4: keys[3].private_bytes()},
                    public_keys=public, neighbours=g.neighbours)
    assert info.value.party == 4 and not acc.any()


# -- adjacency ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol,n", [("secagg", 9), ("secagg+", 150)])
def test_adjacency_answers_as_the_graph(protocol: str, n: int) -> None:
    g = round_graph(_ctx(protocol, n), SOME_SEED)
    adj = Adjacency(g)
    subset = {u for u in g.members if u % 3}
    within = adj.mask(subset)
    counts = adj.counts(within)
    for u in g.members:
        assert adj.neighbours(u) == g.neighbours(u)
        assert adj.neighbours_in(u, within) == sorted(g.neighbours(u) & subset)
        assert counts[adj.row(u)] == len(g.neighbours(u) & subset)


# -- whole rounds: exact ring sums under dropout --------------------------------------


@pytest.mark.parametrize("protocol,n,drop", [("secagg", 12, {0, 7}),
                                             ("secagg+", 90, {1, 5, 44, 45, 46, 89})])
@pytest.mark.parametrize("workers", [1, 2])
def test_round_ring_sum_is_exact_under_dropout(protocol: str, n: int, drop: set[int],
                                               workers: int) -> None:
    cfg = make_config(protocol, n=n, dropout_rate=0.1) if protocol == "secagg+" else \
        make_config(protocol, n=n, threshold=n // 2 + 1)
    xs = make_inputs(range(n), 200, seed=n)
    sim = RoundSimulation(cfg, xs, drop={"masked_input": drop})
    sim.server.workers = workers  # type: ignore[attr-defined]
    phases: list[str | None] = []
    sim.server.trace = phases.append
    res = sim.run()
    assert res.included == tuple(i for i in range(n) if i not in drop)
    want = np.zeros(sim.ctx.vector_length, dtype=np.uint64)
    for i in res.included:
        want += encode_input(sim.ctx, xs[i], 1.0)
    want %= 1 << cfg.bits
    np.testing.assert_array_equal(res.output.ring, want.astype(np.uint32))
    for step in ("decode", "unpack", "reconstruct", "key_agreement", "mask_expansion",
                 "aggregate"):
        assert step in phases
    assert phases[-1] is None


class _ShareAtPrime(RoundSimulation):
    """Client 1 answers with a seed share equal to p (33 bytes, not a field element)."""

    def to_server(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        msg = wire.decode(data)
        if isinstance(msg, UnmaskResponse) and cid == 1:
            (u, _), *rest = msg.seed_shares
            bad = shamir.PRIME.to_bytes(shamir.SHARE_BYTES, "big")
            return wire.encode(dataclasses.replace(msg, seed_shares=((u, bad), *rest)))
        return data


def test_a_share_not_in_the_field_bars_its_sender() -> None:
    cfg = make_config("secagg", n=6, threshold=4)
    xs = make_inputs(range(6), 5)
    sim = _ShareAtPrime(cfg, xs)
    res = sim.run()  # the others still hold enough shares
    assert [(str(e), e.party) for e in sim.server.rejected] == [
        ("malformed share (party 1)", 1)]
    assert res.included == tuple(range(6))
    np.testing.assert_allclose(res.aggregate, sum(xs.values()), atol=6 * 2.0**-cfg.scale)

"""Which ``t`` holders rebuild each secret: shared holder sets for runs of secrets.

Any ``t`` of a secret's answered shares rebuild it, and the Lagrange coefficients depend only on
the holders used, so secrets rebuilt from the *same* ``t`` holders share one precomputation
(:class:`secagg.shamir.Reconstructor`). With the complete graph (SecAgg) every secret is held by
every survivor, and one set serves all. In a SecAgg+ graph the closed neighbourhood of the
client at ring position ``p`` is the window ``p - k/2 .. p + k/2`` (:mod:`.graph`), so
consecutive clients share all but a few holders: taken in ring order, a run of secrets keeps
one set of ``t`` holders while every one of them holds it, about ``k + 1 - t / (1 - dropout)``
secrets per set instead of one.

The ring order is read back from the public neighbourhoods (:func:`ring_order`), so nothing
here depends on how the graph draws its permutation; if the graph is not such a ring the order
falls back to the ids, which only costs speed (every choice made here is a valid one).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from secagg.protocols.errors import ThresholdError

__all__ = ["group_by_holders", "ring_order"]

Neighbours = Callable[[int], frozenset[int]]


def ring_order(members: Sequence[int], neighbours: Neighbours, degree: int) -> list[int] | None:
    """The members in the ring order of a ``degree``-regular Harary graph, or None.

    With ``h = degree / 2``, closed neighbourhoods are windows of ``2h + 1`` ring positions:
    a neighbour at ring distance ``d`` shares ``2h + 1 - d`` of them with the first member,
    which places the first window; after that the window one step on gains exactly one
    member, ``W(p + 1) - W(p) = {member at p + h + 1}``, which places the rest. Returns None
    (nothing is guessed) for the complete graph, rings too small to read unambiguously, or
    neighbourhoods that are not such a ring.
    """
    n, h = len(members), degree // 2
    if degree % 2 or h < 1 or n < 4 * h + 2:
        return None

    def closed(u: int) -> frozenset[int]:
        return neighbours(u) | {u}

    first = members[0]
    w0 = closed(first)
    dist = {v: 2 * h + 1 - len(w0 & closed(v)) for v in w0 - {first}}
    if sorted(dist.values()) != sorted(list(range(1, h + 1)) * 2):
        return None
    far = next(v for v, d in dist.items() if d == h)
    w_far = closed(far)
    pos = {first: 0} | {v: d if v in w_far else n - d for v, d in dist.items()}
    order: list[int | None] = [None] * n
    for v, p in pos.items():
        order[p] = v
    prev = w0
    for p in range(n - 2 * h - 1):  # fills positions h + 1 .. n - h - 1
        cur_member = order[p + 1]
        if cur_member is None:
            return None
        cur = closed(cur_member)
        gained = cur - prev
        if len(gained) != 1:
            return None
        (order[p + h + 1],) = gained
        prev = cur
    if set(order) != set(members) or len(set(order)) != n:
        return None
    return [u for u in order if u is not None]


def group_by_holders(
    order: Iterable[int], holders: Mapping[int, Collection[int]], t: int
) -> list[tuple[tuple[int, ...], list[int]]]:
    """Split the secrets into runs that share ``t`` holders: ``[(holders, owners), ...]``.

    ``order`` lists the owners (ids not in ``holders`` are skipped); ``holders[u]`` is who
    answered with a share of ``u``'s secret. A run grows while the holders common to all its
    secrets are still at least ``t``; each run uses the ``t`` smallest common holder ids.

    Raises:
        ThresholdError: a secret has fewer than ``t`` holders (``party`` = its owner).
    """
    runs: list[tuple[tuple[int, ...], list[int]]] = []
    common: set[int] = set()
    owners: list[int] = []
    for u in order:
        have = holders.get(u)
        if have is None:
            continue
        if len(have) < t:
            raise ThresholdError(f"{len(have)} shares of a secret, need {t}", party=u)
        if owners:
            both = common.intersection(have)
            if len(both) >= t:
                common = both
                owners.append(u)
                continue
            runs.append((tuple(sorted(common)[:t]), owners))
        common, owners = set(have), [u]
    if owners:
        runs.append((tuple(sorted(common)[:t]), owners))
    return runs

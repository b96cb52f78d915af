"""Cohort choice against SecAgg+ graphs (issue 21, attack 1), run against the real clients.

The server picks each round's cohort. While the graph seed was a public digest of the round
context, a server controlling 6 of 100 allowlisted clients kept them and a victim in a cohort
of 20 (``k = 8``, ``t = 6``), varied the other 13 members offline until the victim's 8
neighbours held all 6 sybils, and then rebuilt both of the victim's secrets from the sybils'
shares alone. The control below does exactly that against the real ``SecAggClient`` objects
with the old seed rule put back, and reads the victim's exact input.

Two defences, each tested on its own:

- *The graph is not the server's to grind.* The seed now hashes every committer's fresh nonce
  (:mod:`secagg.protocols.graph`), the victim's own included; the server fixes the commitment
  list before any nonce is revealed. Offline grinding is blind: the attacker's best cohort
  surrounds the victim exactly as often as a random one does.
- *The corruption bound counts what the server can place.* With ``population = N`` the config
  is sized for every sybil the server can put in one cohort (``ceil(gamma N)``,
  :func:`secagg.protocols.params.corrupt_count`). At ``N = 100``, ``n = 20`` that is the
  ``k = 12``, ``t = 10`` graph, on which no placement of 5 sybils (6 at ``gamma = 0.06``)
  breaks condition 2, so the sybils never hold ``t`` shares of a victim whatever graph the
  reveals draw.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import pytest

from secagg import kex, shamir
from secagg.prg import MaskPRG, add_masks_into
from secagg.protocols import RemoteProtocolError, RoundContext, SecAggConfig
from secagg.protocols import graph_nonce as client_module
from secagg.protocols import server as server_module
from secagg.protocols.client import SecAggClient
from secagg.protocols.encoding import check_input, encode_input
from secagg.protocols.graph import NeighbourGraph, commitment, graph_seed
from secagg.protocols.labels import (
    PURPOSE_MASK_SEED,
    kex_info,
    kex_salt,
    pair_mask_label,
    self_mask_label,
)
from secagg.protocols.messages import MaskedInput, Roster
from secagg.protocols.params import cohort_choice_risk
from secagg.sign import SigningKey
from tests.protocols.helpers import Driver, make_config, roundtrip

N, COHORT = 100, 20
VICTIM = 0
SYBILS = (94, 95, 96, 97, 98, 99)
DIM = 6


def old_seed(ctx: RoundContext) -> bytes:
    """The graph seed before this change: a public digest of the round context."""
    return hashlib.sha256(b"secagg/v1/graph-seed" + ctx.digest).digest()


IDENTITIES = {i: SigningKey.from_private_bytes(hashlib.sha256(b"id%d" % i).digest())
              for i in range(N)}


def context(cfg: SecAggConfig, cohort: list[int]) -> RoundContext:
    return RoundContext(config=cfg, round_id=1, dim=DIM, client_ids=cohort,
                        verify_keys={i: IDENTITIES[i].verify_key for i in cohort})


def surrounded(graph: NeighbourGraph, need: int) -> bool:
    return len(graph.neighbours(VICTIM) & set(SYBILS)) >= need


def grind(cfg: SecAggConfig, tries: int, seed: int = 1) -> RoundContext | None:
    """The offline search: keep the victim and the sybils, vary the other members, and stop
    at a cohort whose (old, public) graph gives the victim ``t`` sybil neighbours."""
    pick = random.Random(seed)  # the attacker's own choices: any generator will do
    others = [i for i in range(N) if i != VICTIM and i not in SYBILS]
    for _ in range(tries):
        cohort = sorted([VICTIM, *SYBILS, *pick.sample(others, COHORT - 1 - len(SYBILS))])
        ctx = context(cfg, cohort)
        if surrounded(NeighbourGraph(old_seed(ctx), ctx.client_ids, cfg.k), cfg.threshold):
            return ctx
    return None


def run_with_sybils(ctx: RoundContext) -> Driver:
    """An honest-looking round of the real clients; the sybils are real clients too, whose
    every secret the server reads."""
    d = Driver(ctx.config, dim=DIM, ids=ctx.client_ids)
    d.identities = {i: IDENTITIES[i] for i in ctx.client_ids}
    d.ctx = ctx
    d.server = server_module.SecAggServer(ctx)
    d.clients = {i: SecAggClient(ctx, i, identity=IDENTITIES[i]) for i in ctx.client_ids}
    d.start()
    d.step()  # advertise and the reveals -> rosters -> shares
    d.step()  # relays -> masked inputs
    return d


def read_victim(d: Driver, sybils: tuple[int, ...] = SYBILS) -> tuple[int, np.ndarray | None]:
    """The sybils pool the victim's shares they hold; with ``t`` of them they rebuild its
    self-mask seed and its mask key and strip every mask off its upload."""
    ctx, t = d.ctx, d.ctx.config.threshold
    victim: SecAggClient = d.clients[VICTIM]  # type: ignore[assignment]
    held = {s: d.clients[s]._s.held[VICTIM] for s in sybils  # type: ignore[attr-defined]
            if VICTIM in d.clients[s]._s.held}  # type: ignore[attr-defined]
    if len(held) < t:
        return len(held), None
    b = shamir.combine([shamir.Share.from_bytes(s + 1, h[0]) for s, h in held.items()],
                       threshold=t)
    key = kex.KeyPair.from_private_bytes(shamir.combine(
        [shamir.Share.from_bytes(s + 1, h[1]) for s, h in held.items()], threshold=t))
    (up,) = d.sent[VICTIM]
    assert isinstance(up, MaskedInput)
    from secagg.packing import unpack

    ring = unpack(up.data, up.bits, up.count)
    masks = [(MaskPRG(b, label=self_mask_label(ctx, VICTIM)), True)]
    for v in sorted(victim.committed):
        s_pk = d.server._adverts[v].s_public  # type: ignore[attr-defined]
        pair = kex.agree(key, s_pk, salt=kex_salt(ctx),
                         info=kex_info(ctx, PURPOSE_MASK_SEED, VICTIM, v))
        masks.append((MaskPRG(pair, label=pair_mask_label(ctx, VICTIM, v)), not VICTIM > v))
    add_masks_into(ring, masks, bits=ctx.config.bits)
    return len(held), ring


def exact_input(d: Driver) -> Any:
    return encode_input(d.ctx, *check_input(d.ctx, d.xs[VICTIM], None))


def test_control_a_public_seed_lets_cohort_choice_read_the_victim(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack of the issue, with the old rule (seed = digest of the context) put back."""
    cfg = SecAggConfig(protocol="secagg+", n=COHORT, active=True)
    assert (cfg.k, cfg.threshold, cfg.corrupt) == (8, 6, 1)
    ctx = grind(cfg, tries=20_000)
    assert ctx is not None  # found offline (236 to 1,557 tries in the runs)
    for module in (client_module, server_module):
        monkeypatch.setattr(module, "graph_seed", lambda c, reveals: old_seed(c))
    d = run_with_sybils(ctx)
    assert surrounded(d.server.graph, cfg.threshold)  # type: ignore[attr-defined]
    count, ring = read_victim(d)
    assert count == 6 and ring is not None
    np.testing.assert_array_equal(ring, exact_input(d))  # the victim's input, alone


def test_a_ground_cohort_gives_no_advantage_once_nonces_make_the_seed() -> None:
    """The same ground cohort, the real round with commit-reveal: the graph is drawn from
    the victim's fresh nonce, so the sybils almost never surround it. Over 40 real rounds on
    the ground cohort the rate is that of a random graph (P = 0.00103 per round); the
    attacker's offline prediction (certain success) is worthless."""
    cfg = SecAggConfig(protocol="secagg+", n=COHORT, active=True)
    ctx = grind(cfg, tries=20_000)
    assert ctx is not None
    t_or_more, _, _ = cohort_choice_risk(COHORT, cfg.k, cfg.threshold, len(SYBILS))
    assert t_or_more == pytest.approx(78 / 75582)  # C(13, 2) / C(19, 8)
    hits = 0
    for _ in range(40):
        d = run_with_sybils(ctx)
        graph = d.server.graph  # type: ignore[attr-defined]
        assert graph.neighbours(VICTIM) == d.clients[VICTIM].neighbours  # one graph for all
        hits += surrounded(graph, cfg.threshold)
    assert hits <= 2  # P[>= 3 of 40 at p = 0.00103] < 1.1e-5


def test_grinding_the_seed_offline_is_blind() -> None:
    """The same search at scale, on the graph functions: under the old rule every ground
    cohort surrounds the victim; with the seed made of every committer's nonce (the victim's
    fresh) the rate is the random-graph rate, whatever cohort the attacker chose."""
    cfg = SecAggConfig(protocol="secagg+", n=COHORT, active=True)
    ctx = grind(cfg, tries=20_000)
    assert ctx is not None
    trials, hits = 4000, 0
    known = {u: hashlib.sha256(b"sybil%d" % u).digest() for u in ctx.client_ids if u != VICTIM}
    for i in range(trials):
        fresh = hashlib.sha256(b"victim%d" % i).digest()  # unknown to the server beforehand
        seed = graph_seed(ctx, [*known.items(), (VICTIM, fresh)])
        hits += surrounded(NeighbourGraph(seed, ctx.client_ids, cfg.k), cfg.threshold)
    assert hits <= 15  # expected 4.1 (p = 0.00103); P[>= 16] < 1e-5


@pytest.mark.parametrize("sybils", [5, 6])
def test_population_sized_parameters_leave_the_sybils_below_t(sybils: int) -> None:
    """Sized for ``ceil(gamma N)`` sybils in the cohort (gamma = 0.05 and 0.06), no placement
    of them and no graph breaks condition 2 (every honest client has at most ``sybils``
    corrupted neighbours, fewer than ``2t - k - 1``); in real rounds on the ground cohort the
    sybils hold fewer than ``t`` of the victim's shares and cannot rebuild its input."""
    cfg = SecAggConfig(protocol="secagg+", n=COHORT, active=True, population=N,
                       corruption_rate=sybils / N)
    assert cfg.corrupt == sybils and (cfg.k, cfg.threshold) == (12, 10)
    assert sybils < 2 * cfg.threshold - cfg.k - 1
    assert cohort_choice_risk(COHORT, cfg.k, cfg.threshold, sybils) == (0, 0, 0)
    old = SecAggConfig(protocol="secagg+", n=COHORT, active=True)
    ctx = grind(old, tries=20_000)  # the cohort the attacker ground for the old parameters
    assert ctx is not None
    ctx = context(cfg, list(ctx.client_ids))
    for _ in range(3):
        d = run_with_sybils(ctx)
        count, ring = read_victim(d, SYBILS[:sybils])  # the server controls `sybils` of them
        assert count <= sybils < cfg.threshold and ring is None


def _at_roster() -> tuple[Driver, Roster]:
    """A round of 10 whose server has closed the reveal stage; client 0's roster, unsent."""
    cfg = make_config("secagg+", n=10, k=4, threshold=3, active=True)
    d = Driver(cfg)
    d.auto_reveal = False
    d.start()
    for cid, msg in d.close().items():  # the commitment lists, answered honestly
        for rev in d.clients[cid].receive(roundtrip(msg)):
            d.server.receive(cid, roundtrip(rev))
    roster = d.server.close_stage(frozenset())[0]
    assert isinstance(roster, Roster)
    return d, roster


def test_the_server_cannot_change_the_seed_after_the_reveals() -> None:
    """Everything the server could still vary once the nonces are in is refused by the
    victim before it shares anything: a withheld reveal (of a sybil or anyone else), a
    substituted nonce, a reveal of a non-committer, or a commitment list that drops or alters
    the victim's own commitment."""
    fresh = bytes(range(32))
    edits = [
        lambda p: tuple(x for x in p if x[0] != 1),
        lambda p: tuple(x for x in p if x[0] not in (2, 3)),
        lambda p: tuple(x for x in p if x[0] != 0),
        lambda p: tuple((u, fresh if u == 5 else nonce) for u, nonce in p),
        lambda p: tuple(sorted((*p[1:], (0, fresh)))),
    ]
    for edit in edits:
        d, good = _at_roster()
        victim = d.clients[0]
        with pytest.raises(RemoteProtocolError, match=r"reveal|commitment"):
            victim.receive(roundtrip(Roster(good.round_id, good.entries, edit(good.reveals))))
        assert victim.stage.value == "aborted" and not victim._s.held  # type: ignore[attr-defined]
    d, good = _at_roster()  # control: the honest roster is accepted, shares go out
    (shares,) = d.clients[0].receive(roundtrip(good))
    assert shares.ciphertexts  # type: ignore[attr-defined]
    cfg = make_config("secagg+", n=10, k=4, threshold=3, active=True)
    for edit_list in (lambda p: tuple(x for x in p if x[0] != 0),
                      lambda p: tuple((u, bytes(32) if u == 0 else c) for u, c in p)):
        d = Driver(cfg)
        d.auto_reveal = False
        d.start()
        msg = d.close()[0]
        with pytest.raises(RemoteProtocolError, match="my commitment"):
            d.clients[0].receive(roundtrip(type(msg)(
                msg.round_id, edit_list(msg.commitments))))  # type: ignore[attr-defined]
    d = Driver(cfg)
    d.auto_reveal = False
    d.start()
    msg = d.close()[0]
    (rev,) = d.clients[0].receive(roundtrip(msg))
    assert commitment(d.ctx, 0, rev.nonce) == dict(msg.commitments)[0]  # type: ignore[attr-defined]

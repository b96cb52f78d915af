"""A malicious Flower server against real nodes pinned by their own policy files.

Each node is a real ``ClientApp`` with ``secagg_mod`` and a real ``Context`` whose node config
names its policy file (``secagg-policy``); its key folder is what ``secagg keygen client``
wrote. The adversary is a server that takes the honest workflow's Messages and changes them
before delivery (:class:`LocalGrid`'s hook), or builds its own. Every refusal names the field
(:class:`PolicyMismatch`), comes before the app trained and before the node holds a protocol
session, and is followed by the control: the honest Message, delivered to the same node,
is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from secagg.fl_core.flower import (
    NODE_INSECURE_KEY,
    NODE_POLICY_KEY,
    FederationPolicy,
    NodePolicyError,
    NoNodePolicy,
    SecAggWorkflow,
)
from secagg.fl_core.flower._state import RECORD, join_frames, split_frames
from secagg.fl_core.runtime.policy import PolicyMismatch
from secagg.protocols.errors import ConfigError, RemoteProtocolError, ThresholdError
from secagg.protocols.messages import (
    AdvertiseKeys,
    Commitments,
    Reveal,
    Roster,
    RosterEntry,
    ShareKeys,
)
from secagg.protocols.wire import decode, encode
from secagg.sign import SigningKey

from ._nodes import (
    LocalGrid,
    Node,
    capture,
    config_of,
    default_update,
    federation,
    fit_for,
    phase,
    policy_of,
    record,
    server_side,
    with_record,
    write_keys,
    write_policy,
)

__all__ = ["server_side"]  # the fixture, imported for pytest

DIM = 16
IDS = (1, 2, 3, 4)
PUBLIC: dict[str, Any] = {"protocol": "secagg+", "n": 4, "min_cohort": 3, "clip": 1.0,
                          "dim": DIM}
NODE_IDS = {cid: 7_000_000_000 + 1000 * cid + 17 for cid in (*IDS, 99)}
"""Flower's node ids: nothing to do with the protocol ids (the cards' ids)."""


@pytest.fixture
def fed(tmp_path: Path) -> Any:
    return federation(tmp_path, IDS, PUBLIC)


def make_nodes(fed: Any, ids: tuple[int, ...] = IDS) -> dict[int, Node]:
    return {NODE_IDS[c]: Node(NODE_IDS[c], {NODE_POLICY_KEY: str(fed.policies[c])}, c, DIM)
            for c in ids}


def by_cid(nodes: dict[int, Node]) -> dict[int, Node]:
    return {n.cid: n for n in nodes.values()}


def want_sum(ids: tuple[int, ...], rnd: int) -> np.ndarray:
    return sum(default_update(c, rnd, DIM).astype(np.float64) for c in ids)


def honest_starts(fed: Any, nodes: dict[int, Node], round_id: int,
                  cohort: tuple[int, ...] = IDS) -> dict[int, Message]:
    """The honest workflow's round starts, captured instead of delivered."""
    wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
    return capture(wf, nodes, fit_for([NODE_IDS[c] for c in cohort], DIM), round_id)


def accepted(node: Node, msg: Message) -> list[bytes]:
    """Deliver ``msg``; the node's first protocol messages."""
    reply = node(msg)
    return split_frames(reply.content.config_records[RECORD]["data"])  # type: ignore[arg-type]


def refused(node: Node, msg: Message, field: str) -> None:
    """``msg`` is refused by field, before training and before any protocol session."""
    with pytest.raises(PolicyMismatch) as err:
        node(msg)
    assert err.value.field == field, err.value
    assert node.trained == [] and node.participant is None


# -- honest rounds (the control of everything below) ---------------------------------------


def test_active_rounds_over_pinned_nodes_are_exact(fed: Any, server_side: None) -> None:
    nodes = make_nodes(fed)
    wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
    res = wf.run_round(LocalGrid(nodes), fit_for(nodes, DIM), round_id=1)
    assert res.included == IDS  # the cards' ids, not 0..n-1
    assert res.node_of == {c: NODE_IDS[c] for c in IDS}
    assert res.aggregate is not None
    assert np.max(np.abs(res.aggregate - want_sum(IDS, 1))) < 1e-4
    steps: dict[int, int] = {}

    def drop_3_before_masked_input(msg: Message) -> Message | None:
        if phase(msg) == "step" and msg.metadata.dst_node_id == NODE_IDS[3]:
            steps[3] = steps.get(3, 0) + 1
            if steps[3] == 2:  # the relayed shares: node 3 never sends its masked input
                return None
        return msg

    res = wf.run_round(LocalGrid(nodes, drop_3_before_masked_input), fit_for(nodes, DIM),
                       round_id=2)
    assert res.included == (1, 2, 4)
    assert np.max(np.abs(res.aggregate - want_sum((1, 2, 4), 2))) < 1e-4  # type: ignore[operator]


# -- (a) the server's config differs from the node's policy ---------------------------------

Change = Callable[[Message], dict[str, Any]]


def _config(**kw: Any) -> Change:
    return lambda m: {"config": json.dumps({**config_of(m), **kw})}


def _foreign_key(cid: int) -> Change:
    def change(m: Message) -> dict[str, Any]:
        rec = record(m)
        vks = list(rec["verify_keys"])
        vks[list(rec["clients"]).index(cid)] = SigningKey.generate().verify_key.to_bytes()
        return {"verify_keys": vks}
    return change


def _unknown_client(m: Message) -> dict[str, Any]:
    rec = record(m)  # peer 4 replaced by the server's own client 99, with its own key
    clients = [99 if c == 4 else c for c in rec["clients"]]
    vks = list(rec["verify_keys"])
    vks[list(rec["clients"]).index(4)] = SigningKey.generate().verify_key.to_bytes()
    return {"clients": clients, "verify_keys": vks}


ATTACKS: list[tuple[str, str, Change]] = [
    ("lower threshold", "threshold", _config(threshold=2)),
    ("passive instead of active", "active",
     lambda m: {**_config(active=False)(m), "verify_keys": None}),
    ("plain", "protocol", lambda m: {"config": json.dumps({"protocol": "plain", "n": 4}),
                                     "verify_keys": None}),
    ("secagg instead of secagg+", "protocol", _config(protocol="secagg")),
    ("corruption rate", "corruption_rate", _config(corruption_rate=0.0)),
    ("other bits", "bits", lambda m: _config(bits=config_of(m)["bits"] + 1)(m)),
    ("other scale", "scale", lambda m: _config(scale=config_of(m)["scale"] - 4)(m)),
    ("other clip", "clip", _config(clip=4.0)),
    ("other dim", "dim",
     lambda m: {"dim": DIM + 1, "policy": json.dumps({**policy_of(m), "dim": DIM + 1})}),
    ("cohort below the node's minimum", "cohort",
     lambda m: {"clients": [1, 2], "config": json.dumps({**config_of(m), "n": 2}),
                "verify_keys": list(record(m)["verify_keys"])[:2]}),
    ("another policy document", "policy.min_cohort",
     lambda m: {"policy": json.dumps({**policy_of(m), "min_cohort": 2})}),
    ("another node's protocol id", "cid", lambda m: {"cid": 2}),
    ("malformed cohort", "record", lambda m: {"clients": "1,2,3,4"}),
    # (b) the roster: a peer's key substituted, an unknown client added
    ("substituted peer key", "verify_keys", _foreign_key(2)),
    ("unknown client in the cohort", "verify_keys", _unknown_client),
    ("no verify keys", "verify_keys", lambda m: {"verify_keys": None}),
]


@pytest.mark.parametrize(("name", "field", "change"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_each_downgrade_is_refused_before_anything(fed: Any, server_side: None, name: str,
                                                    field: str, change: Change) -> None:
    nodes = make_nodes(fed)
    starts = honest_starts(fed, nodes, round_id=1)
    node = by_cid(nodes)[1]
    refused(node, with_record(starts[1], **change(starts[1])), field)
    frames = accepted(node, starts[1])  # control: the honest start, same round id
    assert isinstance(decode(frames[0]), AdvertiseKeys) and node.trained == [1]


def test_without_a_pinned_dim_the_update_length_is_the_pin(tmp_path: Path,
                                                          server_side: None) -> None:
    """A policy without ``dim``: the node's own update length is the pin, checked after the
    app trained and before the protocol starts (nothing is sent)."""
    fed = federation(tmp_path, IDS, {k: v for k, v in PUBLIC.items() if k != "dim"})
    nodes = make_nodes(fed)
    starts = honest_starts(fed, nodes, round_id=1)
    node = by_cid(nodes)[1]
    lie = with_record(starts[1], dim=DIM + 1,
                      policy=json.dumps({**policy_of(starts[1]), "dim": DIM + 1}))
    with pytest.raises(PolicyMismatch) as err:
        node(lie)
    assert err.value.field == "dim" and node.participant is None
    node2 = by_cid(nodes)[2]
    assert isinstance(decode(accepted(node2, starts[2])[0]), AdvertiseKeys)  # control


# -- (b) split views of the roster -----------------------------------------------------------


def test_split_views_are_refused_before_any_share(fed: Any, server_side: None) -> None:
    """Nodes 1, 2, 3 get the cohort (1, 2, 3, 4) and node 4 the cohort (1, 3, 4), all with
    the allowlisted keys: each view alone passes the policy. The server then shows node 1 a
    commitment list and a roster that mix node 4's advert (committed and signed under the
    other view) with the others': node 1 refuses before it shares anything (node 4's nonce
    does not open a commitment of node 1's round). Control: node 2 gets one view's list and
    roster (1, 2, 3) and sends its shares."""
    nodes = make_nodes(fed)
    cid = by_cid(nodes)
    view_a = honest_starts(fed, nodes, 1, cohort=IDS)
    view_b = honest_starts(fed, nodes, 1, cohort=(1, 3, 4))
    adverts = {c: accepted(cid[c], view_a[c]) for c in (1, 2, 3)}
    adverts[4] = accepted(cid[4], view_b[4])

    def advert(m: int) -> AdvertiseKeys:
        adv = decode(adverts[m][0])
        assert isinstance(adv, AdvertiseKeys)
        return adv

    def step(to: int, msg: Any) -> Message:
        return with_record(view_a[to], phase="step", data=join_frames([encode(msg)]), round=1,
                           config=None, clients=None, verify_keys=None, policy=None, dim=None,
                           cid=None)

    def commitments(members: tuple[int, ...]) -> Commitments:
        return Commitments(1, tuple((m, advert(m).commitment) for m in members))

    nonces = {}
    for node, members in ((1, IDS), (3, IDS), (4, (1, 3, 4)), (2, (1, 2, 3))):
        reveal = decode(accepted(cid[node], step(node, commitments(members)))[0])
        assert isinstance(reveal, Reveal)
        nonces[node] = reveal.nonce

    def roster(members: tuple[int, ...]) -> Roster:
        entries = tuple(RosterEntry(m, advert(m).c_public, advert(m).s_public,
                                    advert(m).signature) for m in members)
        return Roster(1, entries, tuple((m, nonces[m]) for m in members))

    with pytest.raises(RemoteProtocolError, match=r"commitment|signature"):
        cid[1](step(1, roster(IDS)))
    assert cid[1].participant is None  # aborted, secrets wiped, nothing sent
    frames = accepted(cid[2], step(2, roster((1, 2, 3))))  # control: one view's roster
    assert isinstance(decode(frames[0]), ShareKeys)


# -- (c) round ids ---------------------------------------------------------------------------


def test_replayed_or_ground_round_ids_are_refused(tmp_path: Path, server_side: None) -> None:
    fed = federation(tmp_path, IDS, PUBLIC,
                     node_extra={c: {"state": "last-round"} for c in IDS})
    nodes = make_nodes(fed)
    wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
    assert wf.run_round(LocalGrid(nodes), fit_for(nodes, DIM), round_id=1).included == IDS
    fresh = make_nodes(fed)  # a new run: fresh Contexts, the same policy and state files
    node = by_cid(fresh)[1]
    replay = honest_starts(fed, nodes, round_id=1)[1]
    refused(node, replay, "round_id")
    ahead = honest_starts(fed, nodes, round_id=10**6)[1]
    refused(node, ahead, "round_id")  # grinding: ids run ahead at a bounded rate only
    res = wf.run_round(LocalGrid(fresh), fit_for(fresh, DIM), round_id=2)  # control
    assert res.included == IDS
    assert np.max(np.abs(res.aggregate - want_sum(IDS, 2))) < 1e-4  # type: ignore[operator]


# -- who the nodes are ------------------------------------------------------------------------


def test_an_impostor_node_is_not_given_an_id(fed: Any, tmp_path: Path,
                                            server_side: None) -> None:
    """A node with a key folder of its own claims protocol id 2: the server, which checks
    the hello signature against card 2, leaves it out; the round runs over the others."""
    own = write_keys(tmp_path / "impostor", [2])
    doc = {**PUBLIC, "keys": str(own[2]), "client_id": 2}
    policy = write_policy(tmp_path / "impostor" / "policy.json", doc)
    nodes = make_nodes(fed, (1, 3, 4))
    impostor = Node(NODE_IDS[99], {NODE_POLICY_KEY: str(policy)}, 2, DIM)
    nodes[NODE_IDS[99]] = impostor
    wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
    res = wf.run_round(LocalGrid(nodes), fit_for(nodes, DIM), round_id=1)
    assert res.included == (1, 3, 4) and impostor.trained == []
    assert np.max(np.abs(res.aggregate - want_sum((1, 3, 4), 1))) < 1e-4  # type: ignore[operator]


def test_a_node_without_policy_refuses_unless_it_opts_in(fed: Any, server_side: None) -> None:
    bare = {NODE_IDS[c]: Node(NODE_IDS[c], {}, c, DIM) for c in IDS}
    unpinned = SecAggWorkflow("secagg+", clip=1.0)
    with pytest.raises(ThresholdError):
        unpinned.run_round(LocalGrid(bare), fit_for(bare, DIM), round_id=1)
    assert all(isinstance(n.errors[0], NoNodePolicy) and n.trained == [] for n in bare.values())
    insecure = {NODE_IDS[c]: Node(NODE_IDS[c], {NODE_INSECURE_KEY: "true"}, c, DIM) for c in IDS}
    res = unpinned.run_round(LocalGrid(insecure), fit_for(insecure, DIM), round_id=1)  # control
    assert len(res.included) == 4
    pinned = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
    with pytest.raises(ThresholdError):  # an insecure node has no card id to announce
        pinned.run_round(LocalGrid(insecure), fit_for(insecure, DIM), round_id=2)
    both = Node(1, {NODE_INSECURE_KEY: True, NODE_POLICY_KEY: str(fed.policies[1])}, 1, DIM)
    with pytest.raises(NodePolicyError, match="both"):
        both(honest_starts(fed, make_nodes(fed), 1)[1])


def test_active_mode_needs_the_policy_and_the_allowlist(fed: Any) -> None:
    with pytest.raises(ConfigError):
        SecAggWorkflow("secagg+", active=True)
    with pytest.raises(ConfigError):
        SecAggWorkflow.from_policy(fed.server_policy)


# -- the policy file -------------------------------------------------------------------------


def test_policy_file_is_the_operators_alone(fed: Any, tmp_path: Path) -> None:
    path = fed.policies[1]
    path.chmod(0o666)
    with pytest.raises(NodePolicyError, match="writable"):
        FederationPolicy.load(path)
    path.chmod(0o644)
    FederationPolicy.load(path)  # control
    bad = write_policy(tmp_path / "typo.json", {**PUBLIC, "treshold": 2})
    with pytest.raises(NodePolicyError, match="unknown"):
        FederationPolicy.load(bad)
    toml = tmp_path / "policy.toml"
    toml.write_text('protocol = "secagg+"\nn = 4\nmin_cohort = 3\nclip = 1.0\n')
    toml.chmod(0o644)
    assert FederationPolicy.load(toml).digest(DIM) == FederationPolicy.load(path).digest(DIM)


def test_keys_setup_announcement_is_checked_too(fed: Any, server_side: None) -> None:
    """The CKKS ``keys`` message goes through ``ClientPolicy.check_keys``: a node pinned to
    secagg+ refuses a CKKS key setup (control: the pinned secagg+ start passes above)."""
    node = by_cid(make_nodes(fed))[1]
    start = honest_starts(fed, make_nodes(fed), 1)[1]
    keys = with_record(start, phase="keys", epoch=1, round=None, dim=None, policy=None,
                       config=json.dumps({"protocol": "ckks", "n": 4, "active": True}))
    with pytest.raises(PolicyMismatch) as err:
        node(keys)
    assert err.value.field == "protocol" and node.trained == []


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
def test_active_ckks_key_setup_and_round(tmp_path: Path, server_side: None,
                                         protocol: str) -> None:
    """Active CKKS over Flower: the key setup is signed and its announcement checked
    against the node's key folder (a substituted key is refused, the honest announcement is
    accepted), then a round's decrypted sum is exact."""
    fed = federation(tmp_path, IDS, {**PUBLIC, "protocol": protocol})
    nodes = make_nodes(fed)
    wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
    announced = capture(wf, nodes, fit_for(nodes, DIM), 1, stage="keys")
    node = by_cid(nodes)[1]
    with pytest.raises(PolicyMismatch) as err:
        node(with_record(announced[1], **_foreign_key(3)(announced[1])))
    assert err.value.field == "verify_keys" and node.participant is None
    assert accepted(node, announced[1])  # control: the honest announcement
    fresh = make_nodes(fed)
    wf = SecAggWorkflow.from_policy(fed.server_policy, keys=fed.cards)
    res = wf.run_round(LocalGrid(fresh), fit_for(fresh, DIM), round_id=1)
    assert res.included == IDS
    assert np.max(np.abs(res.aggregate - want_sum(IDS, 1))) < 1e-3  # type: ignore[operator]

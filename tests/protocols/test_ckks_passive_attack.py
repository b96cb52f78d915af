"""A malicious server against the CKKS key setup: it substitutes its own X25519 keys in the
rosters it relays, opens the leader's deliveries, re-delivers (or forges) the key as the leader.

The adversary is code that drives the real :class:`KeySetupClient` objects through the wire
codec. Where the relay is trusted (passive mode, ``trust_relay=True``: ``--insecure`` only) it
wins: every member confirms a key the server holds, and the server then reads a member's upload.
In every mode the runtime allows by default (active; or passive without ``trust_relay``) every
choice of views to tamper with, under both strategies, ends in a typed error and nobody accepts
a key the server knows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest

from secagg import kex
from secagg.aead import Aead
from secagg.ckks import CkksPreset, CkksPublicContext, CkksSecretContext, decrypt_ints
from secagg.protocols import LocalProtocolError, ProtocolError, RemoteProtocolError, labels
from secagg.protocols.config import SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import check_input, encode_input
from secagg.protocols.epoch import EpochContext
from secagg.protocols.harness import create_client
from secagg.protocols.keysetup import KeySetupClient
from secagg.protocols.messages import (
    CkksInput,
    KeyAdvert,
    KeyConfirm,
    KeyDelivery,
    KeyDistribution,
    KeyRoster,
    KeyRosterEntry,
    Message,
)
from secagg.protocols.transitions import ClientStage
from secagg.sign import SigningKey
from tests.protocols.ckks_helpers import ckks_config
from tests.protocols.helpers import roundtrip

STRATEGIES = ("open-and-redeliver", "forge")
"""``open-and-redeliver``: open the leader's ciphertexts addressed to the server's stand-in keys
and re-encrypt the key to each member as the leader. ``forge``: generate a key of its own and
deliver it as the leader."""


@dataclass
class Outcome:
    stolen: CkksSecretContext | None = None
    """The secret context the server holds at the end (None: it holds none)."""
    refused: dict[int, ProtocolError] = field(default_factory=dict)
    confirmed: dict[int, bytes] = field(default_factory=dict)
    """Member -> fingerprint it confirmed."""


def _send(client: KeySetupClient, msg: Message, cid: int, out: Outcome) -> list[Message]:
    try:
        return [roundtrip(m) for m in client.receive(roundtrip(msg))]
    except ProtocolError as exc:
        out.refused[cid] = exc
        return []


def key_substituting_server(ectx: EpochContext, clients: dict[int, KeySetupClient],
                            tamper: frozenset[int], strategy: str) -> Outcome:
    """Run one key setup as a man in the middle of the views of the members in ``tamper``.

    In a tampered member's roster every other member's key is a stand-in key of the server's
    (one per impersonated member, so the keys stay distinct); the signature is the member's own,
    over its real key: the best a server without identity keys can relay.
    """
    out = Outcome()
    ids = sorted(clients)
    adverts: dict[int, KeyAdvert] = {}
    for u in ids:
        (adv,) = clients[u].start()
        assert isinstance(adv, KeyAdvert)
        adverts[u] = adv
    stand_in = {u: kex.KeyPair.generate() for u in ids}
    leader = ectx.leader(ids)
    dist: KeyDistribution | None = None
    for w in ids:
        entries = tuple(
            KeyRosterEntry(u, stand_in[u].public_bytes() if (w in tamper and u != w)
                           else adverts[u].kx_public, adverts[u].signature) for u in ids)
        for m in _send(clients[w], KeyRoster(ectx.epoch, entries), w, out):
            assert isinstance(m, KeyDistribution) and w == leader
            dist = m
    if dist is None:  # the leader refused its roster: the setup ends, nobody has a key
        return out
    public, sig = dist.public_context, dist.signature
    blob = _open_leader_delivery(ectx, dist, adverts, stand_in, tamper)
    if strategy == "forge":  # a key of the server's own, the leader's signature replayed
        own = CkksSecretContext.generate(_preset(ectx))
        blob, public = own.serialize_secret(), own.public_context().to_bytes()
    if blob is not None:
        out.stolen = CkksSecretContext.from_bytes(blob)
    for v, ct in dist.ciphertexts:
        if out.stolen is not None and v in tamper:  # v sees the stand-in key as the leader's
            ad = labels.key_delivery_associated_data(ectx, leader, v, out.stolen.fingerprint)
            ct = _pair_aead(ectx, stand_in[leader], adverts[v].kx_public, leader, v).encrypt(
                out.stolen.serialize_secret(), ad)
        _confirm(clients[v], KeyDelivery(ectx.epoch, leader, public, sig, ct), v, out)
    _confirm(clients[leader], KeyDelivery(ectx.epoch, leader, dist.public_context, sig, b""),
             leader, out)
    return out


def _preset(ectx: EpochContext) -> CkksPreset:
    layout = ectx.config.ckks_layout
    assert layout is not None
    return layout.preset


def _pair_aead(ectx: EpochContext, mine: kex.KeyPair, peer: bytes, leader: int, to: int) -> Aead:
    return Aead(kex.agree(mine, peer, salt=ectx.digest,
                          info=labels.key_kex_info(ectx, leader, to)))


def _open_leader_delivery(ectx: EpochContext, dist: KeyDistribution,
                          adverts: dict[int, KeyAdvert], stand_in: dict[int, kex.KeyPair],
                          tamper: frozenset[int]) -> bytes | None:
    """The key, if the leader encrypted it to one of the server's stand-in keys."""
    leader = dist.sender
    if leader not in tamper:
        return None  # the leader used the members' real keys: nothing the server can open
    fp = CkksPublicContext.from_bytes(dist.public_context).fingerprint
    v, ct = dist.ciphertexts[0]
    aead = _pair_aead(ectx, stand_in[v], adverts[leader].kx_public, leader, v)
    return aead.decrypt(ct, labels.key_delivery_associated_data(ectx, leader, v, fp))


def _confirm(client: KeySetupClient, msg: KeyDelivery, cid: int, out: Outcome) -> None:
    if client.stage is not ClientStage.AWAIT_KEY:
        return  # it refused its roster
    for m in _send(client, msg, cid, out):
        assert isinstance(m, KeyConfirm)
        out.confirmed[cid] = m.fingerprint


def _members(cfg: SecAggConfig, *, trust_relay: bool = False
             ) -> tuple[EpochContext, dict[int, KeySetupClient]]:
    ids = list(range(cfg.n))
    ident = {i: SigningKey.generate() for i in ids} if cfg.active else {}
    ectx = EpochContext(config=cfg, epoch=3, client_ids=ids,
                        verify_keys={i: k.verify_key for i, k in ident.items()} or None)
    return ectx, {i: KeySetupClient(ectx, i, identity=ident.get(i), trust_relay=trust_relay)
                  for i in ids}


# -- where the relay is trusted (passive, --insecure), the attack works --------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_trusted_relay_steals_the_key_and_reads_an_upload(strategy: str) -> None:
    cfg = ckks_config("ckks", n=4)
    ectx, clients = _members(cfg, trust_relay=True)
    out = key_substituting_server(ectx, clients, frozenset(clients), strategy)
    stolen = out.stolen
    assert stolen is not None and not out.refused
    # every member but the leader confirms the server's key (open-and-redeliver: the leader's
    # own key, so the leader confirms the same fingerprint too, and nothing looks amiss)
    members = [u for u in clients if u != ectx.leader(clients)]
    fooled = clients if strategy == "open-and-redeliver" else members
    assert {out.confirmed[u] for u in fooled} == {stolen.fingerprint}
    for u in fooled:
        assert clients[u].secret_context.serialize_secret() == stolen.serialize_secret()
    # ... so the server reads a member's upload in the round that follows
    victim = members[0]
    ctx = RoundContext(config=cfg, round_id=1, dim=16, client_ids=list(clients),
                       ckks_fingerprint=stolen.fingerprint)
    x = np.linspace(-0.9, 0.9, 16)
    (up,) = create_client(ctx, victim, key=clients[victim].secret_context).start(x)
    assert isinstance(up, CkksInput)
    layout = cfg.ckks_layout
    assert layout is not None
    lanes = decrypt_ints(stolen, list(up.chunks), count=ctx.vector_length, layout=layout, n=1)
    ring = np.bitwise_and(lanes, (1 << cfg.bits) - 1).astype(np.uint32)
    np.testing.assert_array_equal(ring, encode_input(ctx, *check_input(ctx, x, None)))


# -- in every mode the runtime allows by default, it fails ---------------------------------


def _views(n: int) -> list[frozenset[int]]:
    return [frozenset(c) for r in range(n + 1) for c in itertools.combinations(range(n), r)]


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_key_substitution_fails_in_active_mode_for_every_choice_of_views(
        protocol: str, strategy: str) -> None:
    cfg = (ckks_config("ckks", n=3, active=True) if protocol == "ckks"
           else ckks_config("ckks+mask", n=3, k=2, threshold=2, active=True))
    for tamper in _views(cfg.n):  # exhaustive: which members' views the server rewrites
        ectx, clients = _members(cfg)
        out = key_substituting_server(ectx, clients, tamper, strategy)
        for w in tamper:  # every rewritten view is caught, with a typed error naming a peer
            err = out.refused.get(w)
            assert isinstance(err, RemoteProtocolError), (tamper, w, err)
            assert "signature" in str(err) or "signed" in str(err)
            assert clients[w].stage is ClientStage.ABORTED
        honest = {u: c.secret_context.serialize_secret() for u, c in clients.items()
                  if c.stage is ClientStage.DONE}
        if out.stolen is not None:  # the forged key: no member accepts it
            assert strategy == "forge" and ectx.leader(clients) not in tamper
            assert out.stolen.fingerprint not in out.confirmed.values()
            assert out.stolen.serialize_secret() not in honest.values()
        if not tamper and strategy == "open-and-redeliver":  # an honest relay: all hold the
            # leader's key, the server none
            assert len(honest) == cfg.n and len(set(honest.values())) == 1


def test_passive_key_setup_is_refused_unless_the_relay_is_trusted() -> None:
    cfg = ckks_config("ckks", n=3)
    ectx = EpochContext(config=cfg, epoch=3, client_ids=range(3))
    for cid in range(3):  # nobody takes part, so nobody can accept a substituted key
        with pytest.raises(LocalProtocolError, match="trusts the server as a relay"):
            KeySetupClient(ectx, cid)
        with pytest.raises(LocalProtocolError, match="trusts the server as a relay"):
            KeySetupClient(ectx, cid, trust_relay=1)  # type: ignore[arg-type]

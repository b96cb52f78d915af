"""CKKS key setup: no dealer, the server never holds a secret key, replays and tampering are
refused with typed errors, and keys rotate on request and on membership changes."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from secagg.ckks import CkksSecretContext, decrypt_ints
from secagg.ckks_wire import context_proto_field, decode_envelope
from secagg.errors import CkksError
from secagg.protocols import (
    CkksFederation,
    LocalProtocolError,
    RemoteProtocolError,
    ThresholdError,
    run_round,
    wire,
)
from secagg.protocols.ckks_harness import KeySetupSimulation, setup_keys
from secagg.protocols.epoch import EpochContext
from secagg.protocols.harness import RoundSimulation
from secagg.protocols.messages import KeyDelivery
from secagg.protocols.transitions import ClientStage, ServerStage
from tests.protocols.ckks_helpers import ckks_config

# -- the server never holds a secret key -------------------------------------------------


def _reachable(root: Any) -> Iterator[Any]:
    """Every Python object reachable from ``root`` through attributes and containers."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType,
                                               types.MethodType, int, float, str, bool)):
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, (bytes, bytearray, memoryview, np.ndarray)):
            continue
        if isinstance(obj, dict):
            stack += [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack += list(obj)
        for name in getattr(obj, "__dict__", {}):
            stack.append(getattr(obj, name))
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    stack.append(getattr(obj, name))


def _secret_window(secret: CkksSecretContext) -> bytes:
    _, _, payload = decode_envelope(b"SAcs", secret.serialize_secret())
    sk = context_proto_field(payload, 3, 1)
    assert sk is not None and len(sk) > 1000
    return sk[len(sk) // 2 : len(sk) // 2 + 32]


def assert_keyless(root: Any, windows: list[bytes]) -> int:
    """No secret context, no private TenSEAL context, no secret-key bytes anywhere."""
    count = 0
    for obj in _reachable(root):
        count += 1
        assert not isinstance(obj, CkksSecretContext)
        if callable(getattr(obj, "is_private", None)):
            assert not obj.is_private() and not obj.has_secret_key()
        if callable(getattr(obj, "context", None)) and hasattr(obj, "decrypt"):
            assert not obj.context().is_private()  # a TenSEAL vector's context
        if isinstance(obj, (bytes, bytearray)):
            assert not any(w in obj for w in windows)
    return count


class Recording:
    """Mix-in: keep everything the server receives."""

    def to_server(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        self.received.append(data)  # type: ignore[attr-defined]
        return data


class RecordingSetup(Recording, KeySetupSimulation):
    received: list[bytes]


class RecordingRound(Recording, RoundSimulation):
    received: list[bytes]


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
def test_server_never_holds_a_secret_key(protocol: str) -> None:
    cfg = ckks_config(protocol, n=4, active=True, **(
        {"k": 3, "threshold": 3} if protocol == "ckks+mask" else {}))
    setup = RecordingSetup(cfg, range(4))
    setup.received = []
    res = setup.run()
    windows = [_secret_window(s) for s in res.keys.secrets.values()]
    assert len(set(windows)) == 1 and len(res.keys.holders) == 4
    assert assert_keyless(setup.server, windows) > 10
    assert assert_keyless(res.server_keys, windows)
    got = [wire.decode(b) for b in setup.received]
    assert assert_keyless(got, windows) and assert_keyless(setup.received, windows)
    xs = {i: np.linspace(-1, 1, 10) for i in range(4)}
    rnd = RecordingRound(cfg, xs, keys=res.keys, drop={"masked_input": {3}})
    rnd.received = []
    r = rnd.run()
    assert r.included == (0, 1, 2)
    assert assert_keyless(rnd.server, windows) > 10
    assert assert_keyless([wire.decode(b) for b in rnd.received], windows)
    assert assert_keyless(rnd.received, windows)
    # the walker does see secrets where they are: a member holds the key after the setup
    with pytest.raises(AssertionError):
        assert_keyless(setup.clients[0], windows)
    with pytest.raises(AssertionError):
        assert_keyless([res.keys.secret(0).serialize_secret()], windows)


# -- the setup itself --------------------------------------------------------------------


def test_everyone_agrees_on_the_leader_and_the_key() -> None:
    cfg = ckks_config("ckks", n=5)
    sim = KeySetupSimulation(cfg, range(5), epoch=7)
    res = sim.run()
    assert res.leader == sim.ctx.leader(range(5)) == sim.server.leader
    assert {c.leader for c in sim.clients.values()} == {res.leader}
    fps = {s.fingerprint for s in res.keys.secrets.values()}
    assert fps == {res.keys.fingerprint} and res.server_keys.holders == (0, 1, 2, 3, 4)
    assert res.keys.epoch == 7 and not res.client_errors and not res.server_rejections
    # up: about one secret context per member (the leader's ciphertexts); down likewise
    assert res.bytes_up[res.leader] > 4 * 60_000 and max(res.bytes_down.values()) < 70_000


def test_leader_rule_is_public_and_depends_on_the_epoch() -> None:
    cfg = ckks_config("ckks", n=8)
    leaders = {EpochContext(config=cfg, epoch=e, client_ids=range(8)).leader(range(8))
               for e in range(40)}
    assert len(leaders) > 3  # rendezvous hashing spreads the role
    ectx = EpochContext(config=cfg, epoch=0, client_ids=range(8))
    assert ectx.leader(range(8)) == ectx.leader(reversed(range(8)))
    with pytest.raises(ValueError):
        ectx.leader([99])


def test_a_member_dropping_at_advertise_is_left_out() -> None:
    cfg = ckks_config("ckks", n=4)
    res = setup_keys(cfg, range(4), drop={"advertise": {2}})
    assert res.keys.holders == (0, 1, 3) and 2 not in res.bytes_down


def test_a_leader_that_never_distributes_ends_the_epoch() -> None:
    cfg = ckks_config("ckks", n=4)
    leader = EpochContext(config=cfg, epoch=0, client_ids=range(4)).leader(range(4))
    with pytest.raises(ThresholdError, match="distributed no key"):
        setup_keys(cfg, range(4), drop={"distribute": {leader}})
    assert setup_keys(cfg, range(4), epoch=1).keys.holders == (0, 1, 2, 3)  # next epoch


# -- tampering and replays ---------------------------------------------------------------


class Tamper(KeySetupSimulation):
    """Rewrites what the server sends to ``victim`` (a non-leader) at ``confirm`` with ``edit``."""

    victim = -1
    edit: Any = None

    def to_client(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        if cid == self.victim and stage is ServerStage.CONFIRM:
            return self.edit(data)  # type: ignore[no-any-return]
        return data


def _tampered_setup(cfg: Any, edit: Any, epoch: int = 0) -> tuple[Any, Any, int]:
    sim = Tamper(cfg, range(4), epoch=epoch)
    leader = sim.ctx.leader(range(4))  # the digest binds the (active mode) verify keys
    sim.victim = next(u for u in range(4) if u != leader)
    sim.edit = edit
    return sim, sim.run(), sim.victim


def _refused(sim: Any, res: Any, victim: int) -> None:
    err = sim.client_errors[victim]
    assert isinstance(err, RemoteProtocolError)
    assert sim.clients[victim].stage is ClientStage.ABORTED
    assert sim.clients[victim]._secret is None  # wiped
    assert res.keys.holders == tuple(u for u in range(4) if u != victim)  # others unharmed


def _edit_delivery(**changes: Any) -> Any:
    def edit(data: bytes) -> bytes:
        msg = wire.decode(data)
        assert isinstance(msg, KeyDelivery)
        return wire.encode(dataclasses.replace(msg, **changes))
    return edit


def _flip(data: bytes) -> bytes:
    msg = wire.decode(data)
    assert isinstance(msg, KeyDelivery)
    ct = bytearray(msg.ciphertext)
    ct[len(ct) // 2] ^= 1
    return wire.encode(dataclasses.replace(msg, ciphertext=bytes(ct)))


@pytest.mark.parametrize("edit", [
    _flip,  # a flipped bit in the AEAD ciphertext
    lambda d: d[:-1],  # truncated bytes: the codec refuses
    _edit_delivery(round_id=5),  # another epoch
    _edit_delivery(ciphertext=b""),  # nothing to open
])
def test_tampered_key_delivery_is_refused(edit: Any) -> None:
    _refused(*_tampered_setup(ckks_config("ckks", n=4), edit))


def test_replayed_key_delivery_from_an_earlier_epoch_is_refused() -> None:
    cfg = ckks_config("ckks", n=4)
    old: dict[str, bytes] = {}

    def keep(data: bytes) -> bytes:
        old["delivery"] = data
        return data

    _tampered_setup(cfg, keep, epoch=0)
    # as is: the epoch field says 0, this is epoch 1
    sim, res, v = _tampered_setup(cfg, lambda d: old["delivery"], epoch=1)
    _refused(sim, res, v)
    assert "round 0" in str(sim.client_errors[v])
    # relabelled as epoch 1: the AEAD key and associated data bind the epoch
    relabel = _edit_delivery(round_id=1)
    sim, res, v = _tampered_setup(cfg, lambda d: relabel(old["delivery"]), epoch=1)
    _refused(sim, res, v)


def test_replayed_key_advert_is_refused_by_the_server() -> None:
    cfg = ckks_config("ckks", n=4)
    s0 = KeySetupSimulation(cfg, range(4), epoch=0)
    advert = s0.clients[1].start()[0]
    s1 = KeySetupSimulation(cfg, range(4), epoch=1)
    with pytest.raises(RemoteProtocolError, match="another round"):
        s1.server.receive_data(1, wire.encode(advert))
    assert 1 in s1.server.barred


def test_active_mode_needs_the_leaders_signature() -> None:
    cfg = ckks_config("ckks", n=4, active=True)
    forged = _edit_delivery(signature=bytes(64))
    sim, res, victim = _tampered_setup(cfg, forged)
    _refused(sim, res, victim)
    assert "not signed by the leader" in str(sim.client_errors[victim])


def test_server_refuses_a_context_carrying_a_secret_key() -> None:
    cfg = ckks_config("ckks", n=3)
    sim = KeySetupSimulation(cfg, range(3))
    leader = sim.ctx.leader(range(3))
    for cid, c in sim.clients.items():
        sim.server.receive(cid, c.start()[0])
    rosters = sim.server.close_stage(set())
    dist = sim.clients[leader].receive(rosters[leader])[0]
    secret = sim.clients[leader]._secret.serialize_secret()
    with pytest.raises(ValueError):  # a secret context does not even fit the field
        dataclasses.replace(dist, public_context=secret)
    evil = dataclasses.replace(dist, public_context=secret[:4096])
    with pytest.raises(RemoteProtocolError, match="public context refused"):
        sim.server.receive(leader, evil)
    assert leader in sim.server.barred


# -- rotation ----------------------------------------------------------------------------


def _xs(ids: Any, dim: int = 6) -> dict[int, Any]:
    return {i: np.full(dim, 0.125 * (i + 1)) for i in ids}


def test_rotation_on_request_refuses_old_ciphertexts() -> None:
    cfg = ckks_config("ckks", n=3)
    fed = CkksFederation(cfg, range(3))
    r1 = fed.run_round(_xs(range(3)))
    old_keys = fed.keys
    fed.rotate()
    assert fed.epoch == 1 and fed.keys.fingerprint != old_keys.fingerprint
    # client 1 uploads a ciphertext made under the old epoch's key
    stale: dict[str, bytes] = {}

    class Stale(RoundSimulation):
        def to_server(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
            if cid == 1:
                return stale["upload"]
            return data

    probe = RoundSimulation(cfg, _xs(range(3)), keys=old_keys, round_id=9)
    stale["upload"] = wire.encode(dataclasses.replace(
        probe.clients[1].start(_xs(range(3))[1])[0], round_id=10))
    sim = Stale(cfg, _xs(range(3)), keys=fed.keys, round_id=10)
    r2 = sim.run()
    assert r2.included == (0, 2) and sim.server.barred == {1}
    assert "another context" in str(r2.server_rejections[0])
    np.testing.assert_allclose(r2.aggregate, _xs([0])[0] + _xs([2])[2], atol=1e-4)
    assert r1.included == (0, 1, 2)


def test_membership_change_rotates_and_new_members_get_the_key() -> None:
    cfg = ckks_config("ckks", n=3)
    fed = CkksFederation(cfg, range(3))
    fed.run_round(_xs(range(3)))
    e0 = fed.keys
    r = fed.run_round(_xs([0, 1, 5]))  # 5 is new: it joins, the key rotates
    assert fed.epoch == 1 and fed.members == {0, 1, 2, 5} and 5 in fed.keys.holders
    assert r.included == (0, 1, 5) and r.keys is fed.keys
    fed.run_round(_xs([0, 1, 2]))  # no change: no rotation
    assert fed.epoch == 1 and len(fed.setups) == 2
    assert fed.set_members([0, 1, 5]) is not None and fed.epoch == 2  # 2 leaves
    r3 = fed.run_round(_xs([0, 1, 5]))
    # the member that left (it holds only older keys) cannot read the new sum
    enc = RoundSimulation(cfg, _xs([0, 1, 5]), keys=fed.keys, round_id=99)
    enc.run()
    assert enc.server.encrypted is not None
    for old in (e0.secret(2), fed.setups[1].keys.secret(2)):
        with pytest.raises(CkksError, match="another context"):
            decrypt_ints(old, list(enc.server.encrypted.chunks), count=6,
                         layout=cfg.ckks_layout, n=3)
    assert r3.included == (0, 1, 5)
    with pytest.raises(LocalProtocolError):
        e0.secret(5)


def test_federation_rejects_non_ckks_configs() -> None:
    with pytest.raises(LocalProtocolError):
        CkksFederation(ckks_config("secagg", n=3), range(3))
    with pytest.raises(LocalProtocolError):
        run_round(ckks_config("secagg", n=3), _xs(range(3)),
                  keys=setup_keys(ckks_config("ckks", n=3), range(3)).keys)

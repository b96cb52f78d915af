"""A malicious server against the real client: downgrades, foreign verify keys, small
cohorts and round-id grinding are refused before any secret is used (DESIGN part 6).

The adversary is code: it crafts :class:`RoundStart` and CKKS ``keys`` messages and sends them
to the real client session (:class:`secagg.fl_core.runtime.client_app._Session`, whose ``on_start``
/
``on_keys`` are what ``run_client`` calls), once over a real CurveZMQ loopback socket against
``run_client`` itself. Every refusal must be a :class:`PolicyMismatch` naming the field, and the
client's update must never be computed nor anything sent at a protocol stage. Then an honest
federation of policy-pinned clients completes rounds, and two clients whose policies differ
cannot complete a round together even when the server hides its policy (the policy digest is in
the round context).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from secagg.fl_core.identity.keys import Allowlist, ClientKeys, CurveKeyPair
from secagg.fl_core.runtime import client_app
from secagg.fl_core.runtime import driver as driver_module
from secagg.fl_core.runtime.client_app import ClientSettings, run_client
from secagg.fl_core.runtime.driver import DriverSettings, RoundDriver
from secagg.fl_core.runtime.policy import ClientPolicy, PolicyMismatch, policy_document
from secagg.fl_core.runtime.rounds import CONTROL, RoundStart, control_message, limits_for
from secagg.fl_core.runtime.server_app import ServerSettings, serve
from secagg.fl_core.transport.sockets import ClientTransport, ServerTransport
from secagg.protocols.config import SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.sign import SigningKey
from tests.fl_core._wire import Wire

N, DIM = 3, 8
ARGS: dict[str, Any] = {"protocol": "secagg+", "n": N, "active": True}


class _Federation:
    def __init__(self) -> None:
        self.server = CurveKeyPair.generate()
        self.clients = {c: ClientKeys.generate(c) for c in range(1, N + 1)}
        self.allowlist = Allowlist(k.card for k in self.clients.values())

    def policy(self, **kw: Any) -> ClientPolicy:
        return ClientPolicy(config_args=kw.pop("config_args", ARGS), dim=DIM,
                            verify_keys={c: card.identity for c, card in self.allowlist.items()},
                            **kw)


@pytest.fixture(scope="module")
def fed() -> _Federation:
    return _Federation()


def _session(fed: _Federation, policy: ClientPolicy,
             cid: int = 1) -> tuple[client_app._Session, Wire, list[int]]:
    wire, calls = Wire(cid), []

    def update(round_id: int, state: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        calls.append(round_id)  # the update (and its DP noise share) is computed only here
        return np.full(DIM, 0.25)

    s = client_app._Session(wire, fed.clients[cid], update, ClientSettings(), policy)  # type: ignore[arg-type]
    return s, wire, calls


def _honest_start(fed: _Federation, policy: ClientPolicy, round_id: int = 1,
                  clients: tuple[int, ...] = (1, 2, 3)) -> RoundStart:
    args = {**ARGS, "n": len(clients)}
    return RoundStart(round_id=round_id, step=0, first_stage=1, config=args, dim=DIM,
                      clients=clients,
                      verify_keys={c: fed.allowlist[c].identity.to_bytes() for c in clients},
                      state=np.zeros(DIM), policy=policy.document)


def _attacker_key(fed: _Federation) -> dict[int, bytes]:
    keys = {c: fed.allowlist[c].identity.to_bytes() for c in (1, 2, 3)}
    keys[2] = SigningKey.generate().verify_key.to_bytes()  # the server's own key for peer 2
    return keys


# Each attack: (name, the field the client must name, how the start is changed).
ATTACKS: list[tuple[str, str, Callable[[_Federation, RoundStart], RoundStart]]] = [
    ("plain", "protocol", lambda f, s: replace(s, config={"protocol": "plain", "n": N},
                                                 verify_keys=None)),
    ("passive", "active", lambda f, s: replace(s, config={**s.config, "active": False},
                                                 verify_keys=None)),
    ("lower threshold", "threshold",
     lambda f, s: replace(s, config={**s.config, "threshold": 2})),
    ("corruption rate", "corruption_rate",
     lambda f, s: replace(s, config={**s.config, "corruption_rate": 0.01})),
    ("dropout rate", "dropout_rate",
     lambda f, s: replace(s, config={**s.config, "dropout_rate": 0.3})),
    ("bits", "bits", lambda f, s: replace(s, config={**s.config, "bits": 32})),
    ("scale", "scale", lambda f, s: replace(s, config={**s.config, "scale": 8})),
    ("clip", "clip", lambda f, s: replace(s, config={**s.config, "clip": 8.0})),
    ("dim", "dim", lambda f, s: replace(s, dim=DIM + 1, state=np.zeros(DIM + 1))),
    ("foreign verify key", "verify_keys", lambda f, s: replace(s, verify_keys=_attacker_key(f))),
    ("no verify keys", "verify_keys", lambda f, s: replace(s, verify_keys=None)),
    ("cohort below minimum", "cohort",
     lambda f, s: replace(s, clients=(1, 2), config={**s.config, "n": 2},
                          verify_keys={c: f.allowlist[c].identity.to_bytes() for c in (1, 2)})),
    ("config n lies about the cohort", "n",
     lambda f, s: replace(s, config={**s.config, "n": 4})),
    ("another policy (DP)", "policy.dp",
     lambda f, s: replace(s, policy={**(s.policy or {}), "dp": {"noise_multiplier": 0.1}})),
]


def test_the_honest_start_is_accepted(fed: _Federation) -> None:
    # The control: the same start, unchanged, makes the client compute and send its advert.
    policy = fed.policy()
    s, wire, calls = _session(fed, policy)
    s.on_start(_honest_start(fed, policy))
    assert not s.refused and calls == [1] and wire.sent and wire.sent[0][1] == 1
    assert s.participant is not None
    assert s.participant._ctx.policy_digest == policy.digest


@pytest.mark.parametrize(("name", "field", "attack"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_each_downgrade_is_refused_before_any_secret(
        fed: _Federation, name: str, field: str,
        attack: Callable[[_Federation, RoundStart], RoundStart]) -> None:
    policy = fed.policy()
    s, wire, calls = _session(fed, policy)
    s.on_start(attack(fed, _honest_start(fed, policy)))
    assert [e.field for e in s.refused] == [field], (name, [str(e) for e in s.refused])
    assert isinstance(s.refused[0], PolicyMismatch) and field in str(s.refused[0])
    assert wire.sent == [] and calls == [] and s.participant is None, name
    assert s.last_round == 0  # a refused start does not advance the client's round


def test_foreign_verify_key_names_the_client(fed: _Federation) -> None:
    policy = fed.policy()
    s, _, _ = _session(fed, policy)
    s.on_start(replace(_honest_start(fed, policy), verify_keys=_attacker_key(fed)))
    assert "client 2" in str(s.refused[0])


def test_a_smaller_cohort_within_the_clients_own_minimum_is_taken(fed: _Federation) -> None:
    # the client's federation has 4 parties and it allows rounds of 3 (--min-clients 3, the
    # cohort floor; cohorts of 2 are refused: tests/fl_core/test_cohort_floor.py)
    policy = fed.policy(config_args={**ARGS, "n": 4}, min_cohort=3)
    s, wire, calls = _session(fed, policy)
    s.on_start(_honest_start(fed, policy, clients=(1, 2, 3)))
    assert not s.refused and calls == [1] and wire.sent


def test_round_id_grinding_is_refused(fed: _Federation) -> None:
    policy = fed.policy()
    s, wire, calls = _session(fed, policy)
    s.on_start(_honest_start(fed, policy, round_id=7))  # the first id a client sees: taken
    assert calls == [7]
    sent = len(wire.sent)
    s.on_start(_honest_start(fed, policy, round_id=7 + 2**20))  # 20 bits of grinding
    assert [e.field for e in s.refused] == ["round_id"]
    assert len(wire.sent) == sent and calls == [7]
    s.on_start(_honest_start(fed, policy, round_id=8))  # the honest next round still works
    assert calls == [7, 8] and len(s.refused) == 1


def test_round_id_allowance_grows_with_time_only(fed: _Federation) -> None:
    policy = fed.policy(round_burst=2, min_round_interval_s=10.0)
    s, _, calls = _session(fed, policy)
    s.on_start(_honest_start(fed, policy, round_id=1))
    s.on_start(_honest_start(fed, policy, round_id=4))  # 3 > burst 2 at once
    assert [e.field for e in s.refused] == ["round_id"]
    s.clock.last_time -= 10.0  # ten seconds later one more id is allowed
    s.on_start(_honest_start(fed, policy, round_id=4))
    assert calls == [1, 4]


def test_ckks_keys_announcement_is_checked_too(fed: _Federation) -> None:
    args = {"protocol": "ckks", "n": N, "active": True}
    policy = fed.policy(config_args=args)
    vks = {str(c): fed.allowlist[c].identity.to_bytes().hex() for c in (1, 2, 3)}
    honest = {"type": "keys", "round": 1, "epoch": 0, "config": args, "members": [1, 2, 3],
              "first_stage": 6, "verify_keys": vks}
    for head, field in [
        ({**honest, "config": {**args, "active": False}, "verify_keys": None}, "active"),
        ({**honest, "config": {"protocol": "ckks+mask", "n": N, "active": True}}, "protocol"),
        ({**honest, "verify_keys": {**vks, "3": SigningKey.generate().verify_key.to_bytes().hex()}},
         "verify_keys"),
        ({**honest, "members": [1, 2], "verify_keys": {k: v for k, v in vks.items() if k != "3"}},
         "cohort"),
    ]:
        s, wire, _ = _session(fed, policy)
        s.on_keys(1, head)
        assert [e.field for e in s.refused] == [field], [str(e) for e in s.refused]
        assert wire.sent == [] and s.keysetup is None


def test_policy_digest_separates_round_contexts() -> None:
    cfg = SecAggConfig(**{**ARGS, "active": False})
    ctx = [RoundContext(config=cfg, round_id=1, dim=DIM, client_ids=(1, 2, 3),
                        policy_digest=d) for d in (None, bytes(32), bytes([1]) + bytes(31))]
    assert len({c.digest for c in ctx}) == 3


# -- over a real CurveZMQ socket, against run_client itself ---------------------------------


@pytest.fixture
def curve_pair(fed: _Federation) -> Iterator[tuple[ServerTransport, ClientTransport]]:
    limits = limits_for(N, DIM)
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits, keys=fed.server,
                             allowlist=fed.allowlist)
    client = ClientTransport(server.endpoint, client_id=1, limits=limits,
                             keys=fed.clients[1].curve, server_public=fed.server.public)
    yield server, client
    client.close()
    server.close()


def test_malicious_server_over_zeromq_gets_nothing(
        fed: _Federation, curve_pair: tuple[ServerTransport, ClientTransport],
        caplog: pytest.LogCaptureFixture) -> None:
    server, transport = curve_pair
    policy = fed.policy()
    calls: list[int] = []

    def update(round_id: int, state: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        calls.append(round_id)
        return np.full(DIM, 0.25)

    done: list[int] = []
    th = threading.Thread(target=lambda: done.append(run_client(
        transport, keys=fed.clients[1], update=update, policy=policy,
        settings=ClientSettings(heartbeat_s=0.2, idle_timeout_s=20.0))))
    caplog.set_level(logging.WARNING, logger="secagg.fl_core.client")
    th.start()
    try:
        assert server.recv(10_000) is not None  # the client's hello
        got = []
        for rid, (name, _, attack) in enumerate(ATTACKS, start=1):
            start = attack(fed, _honest_start(fed, policy, round_id=rid))
            server.send(1, rid, CONTROL, start.encode())
            t_end = time.monotonic() + 0.3
            while (left := t_end - time.monotonic()) > 0:
                msg = server.recv(max(1, int(left * 1000)))
                if msg is not None:
                    got.append((name, msg.envelope.stage))
        server.send(1, len(ATTACKS), CONTROL, control_message("bye"))
    finally:
        th.join(timeout=20)
    assert not th.is_alive() and done == [0]
    assert [g for g in got if g[1] != CONTROL] == []  # nothing at any protocol stage
    assert calls == []  # the update was never even computed
    refused = [r.getMessage() for r in caplog.records if "not my policy" in r.getMessage()]
    assert len(refused) == len(ATTACKS)
    for (_, field, _), text in zip(ATTACKS, refused, strict=True):
        assert f"{field}:" in text, text


# -- honest federations ---------------------------------------------------------------------


def _client_thread(fed: _Federation, endpoint: str, cid: int, policy: ClientPolicy,
                   out: dict[int, int]) -> threading.Thread:
    def body() -> None:
        with ClientTransport(endpoint, client_id=cid, limits=limits_for(N, DIM),
                             keys=fed.clients[cid].curve, server_public=fed.server.public) as t:
            out[cid] = run_client(t, keys=fed.clients[cid], policy=policy,
                                  update=lambda r, s: np.full(DIM, cid / 10),
                                  settings=ClientSettings(heartbeat_s=0.2, idle_timeout_s=20.0))
    th = threading.Thread(target=body)
    th.start()
    return th


def test_honest_rounds_complete_with_pinned_policies(fed: _Federation, tmp_path: Path) -> None:
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(N, DIM), keys=fed.server,
                             allowlist=fed.allowlist)
    done: dict[int, int] = {}
    threads = [_client_thread(fed, server.endpoint, c, fed.policy(), done) for c in (1, 2, 3)]
    settings = ServerSettings(config_args=ARGS, dim=DIM, rounds=2,
                              checkpoint=tmp_path / "ck.json",
                              driver=DriverSettings(join_timeout_s=20.0, deadline_s=5.0))
    with server:
        ckpt = serve(server, settings)
    for th in threads:
        th.join(timeout=30)
    assert ckpt.step == 2 and done == {1: 2, 2: 2, 3: 2}
    assert np.allclose(ckpt.state, 2 * 0.2, atol=1e-3)  # two means of 0.1, 0.2, 0.3


def test_clients_with_different_policies_cannot_complete_a_round(
        fed: _Federation, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # The server hides its policy document, so no client can name a field; client 3 pins a
    # different policy (a federation of 4, rounds of 3 to 4). The config of the round is the
    # same for
    # all, yet the policy digests in their round contexts differ: signatures and pairwise keys
    # do not match, and the round cannot complete with client 3 in it.
    monkeypatch.setattr(driver_module, "RoundStart",
                        lambda **kw: RoundStart(**{**kw, "policy": None}))
    server = ServerTransport("tcp://127.0.0.1:*", limits=limits_for(N, DIM), keys=fed.server,
                             allowlist=fed.allowlist)
    done: dict[int, int] = {}
    policies = {1: fed.policy(), 2: fed.policy(),
                3: fed.policy(config_args={**ARGS, "n": 4}, min_cohort=3)}
    assert policies[3].digest != policies[1].digest
    assert policy_document(config=SecAggConfig(**ARGS), dim=DIM, min_cohort=N, dp=None) == (
        policies[1].document)
    caplog.set_level(logging.WARNING)
    threads = [_client_thread(fed, server.endpoint, c, policies[c], done) for c in (1, 2, 3)]
    with server:
        d = RoundDriver(server, config_args=ARGS,
                        settings=DriverSettings(join_timeout_s=20.0, deadline_s=3.0))
        out = d.run_round(1, 0, np.zeros(DIM))
        d.goodbye(1)
        time.sleep(0.2)
    for th in threads:
        th.join(timeout=30)
    assert out.threshold == 3 and not out.ok, out
    assert 3 not in out.included
    assert out.sampled == (1, 2, 3)
    texts = [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if "not my policy" in t]  # no field check caught it: the
    # digest did. Client 3 took part, but its signature over its keys binds its own context.
    assert any("rejected client 3" in t and "not signed" in t for t in texts), texts

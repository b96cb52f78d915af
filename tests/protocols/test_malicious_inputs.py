"""Bad inputs, unknown peers and malformed content at the server and the clients (split from
test_malicious.py: those are the lying-server attacks on the unmask request, roster and replays)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from secagg.protocols import (
    ClientStage,
    InputError,
    ProtocolError,
    RemoteProtocolError,
    ServerStage,
    run_round,
    wire,
)
from secagg.protocols.messages import (
    SharesRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from tests.protocols.helpers import Driver, bound, make_config, make_inputs, roundtrip
from tests.protocols.test_malicious import refuses

# -- bad inputs and unknown peers ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [np.full(3, np.nan), np.array([0.1, np.inf, 0.2]), np.zeros(4), np.zeros((3, 1)),
     np.array([0.0, 1.5, 0.0])],
)
def test_bad_inputs(bad: Any) -> None:
    cfg = make_config("secagg", n=4, threshold=3)
    xs = make_inputs(range(4), 3)
    with pytest.raises(InputError) as info:
        run_round(cfg, {**xs, 2: bad})
    assert info.value.party == 2 and isinstance(info.value, ValueError)
    # at the participant: the client refuses, aborts, and the others finish without it
    d = Driver(cfg)
    d.xs[2] = bad
    with pytest.raises(InputError):
        d.clients[2].start(bad)
    assert d.clients[2].stage is ClientStage.ABORTED
    result = d.run()
    assert result.included == (0, 1, 3)
    np.testing.assert_allclose(result.values, d.expected_sum((0, 1, 3)), atol=bound(cfg, 3))


def test_weights() -> None:
    cfg = make_config("secagg", n=3, weighted=True)
    xs = make_inputs(range(3), 2)
    for w in (-1.0, 2.0, float("nan")):
        with pytest.raises(InputError):
            run_round(cfg, xs, weights={0: w, 1: 1.0, 2: 1.0})
    with pytest.raises(InputError):
        run_round(make_config("secagg", n=3), xs, weights={0: 1.0})
    with pytest.raises(TypeError):
        run_round(cfg, {**xs, 1: [0.0, 0.0]})  # type: ignore[dict-item]


def test_unknown_sender_at_the_server() -> None:
    d = Driver(make_config("secagg", n=3))
    d.start(skip={0})
    msg = d.clients[0].start(d.xs[0])[0]
    with pytest.raises(RemoteProtocolError) as info:
        d.server.receive_data(999, wire.encode(msg))
    assert info.value.party == 999 and d.server.stage is ServerStage.ADVERTISE
    with pytest.raises(RemoteProtocolError):
        d.server.receive(1, roundtrip(msg))  # claims to be 0, arrives from 1 (sent already)
    d.server.receive_data(0, wire.encode(msg))
    assert d.run().included == (0, 1, 2)


def test_unknown_sender_in_a_relay() -> None:
    d = Driver(make_config("secagg", n=3))
    d.start()
    d.step()
    relay = d.close()[0]
    assert isinstance(relay, SharesRelay)
    evil = SharesRelay(relay.round_id, (*relay.ciphertexts, (999, relay.ciphertexts[0][1])))
    d.inbox[0] = evil
    with pytest.raises(RemoteProtocolError) as info:
        d.clients[0].receive(roundtrip(evil))
    assert info.value.party == 999


def test_server_rejects_bad_content_without_harm() -> None:
    cfg = make_config("secagg", n=4, threshold=3)
    d = Driver(cfg)
    d.start(skip={3})
    adv = d.clients[3].start(d.xs[3])[0]
    dup = dataclasses.replace(adv, c_public=d.sent[0][0].c_public)  # type: ignore[union-attr]
    with pytest.raises(RemoteProtocolError, match="reused"):
        d.server.receive(3, dup)
    with pytest.raises(RemoteProtocolError, match="second"):
        d.server.receive(0, roundtrip(d.sent[0][0]))
    assert d.server.barred == {3}
    res = d.run()
    assert res.included == (0, 1, 2)


def test_server_rejects_misaddressed_shares_and_bad_vectors() -> None:
    cfg = make_config("secagg", n=4, threshold=3)
    d = Driver(cfg)
    d.start()
    d.close()
    d.deliver(skip={0})
    (shares,) = d.clients[0].receive(roundtrip(d.inbox[0]))
    with pytest.raises(RemoteProtocolError, match="neighbours"):
        d.server.receive(0, dataclasses.replace(shares, ciphertexts=shares.ciphertexts[1:]))
    d.close()
    d.deliver(skip={1})
    (masked,) = d.clients[1].receive(roundtrip(d.inbox[1]))
    with pytest.raises(RemoteProtocolError, match="values of"):
        d.server.receive(1, dataclasses.replace(masked, count=masked.count - 1,
                                                data=masked.data[:-3]))
    assert d.server.barred == {0, 1}
    with pytest.raises(ProtocolError):  # two of four gone with t = 3: the round cannot finish
        while d.server.stage is not ServerStage.DONE:
            d.step()


def test_inflated_survivor_count_strips_no_noise() -> None:
    """Removable noise, SecAgg+ active: a server that claims every client survived (to have
    every noise level released, leaving less than sigma in the sum) contradicts the set each
    client signed: the client aborts before revealing a share or a seed. Any other count than
    the signed set's is refused alike; the honest count releases exactly the excess."""
    import dataclasses

    from secagg.protocols.client import removable_levels

    n, t = 10, 3
    d = Driver(make_config("secagg+", n=n, k=4, threshold=t, active=True))
    seeds = {i: {j: bytes([i, j]) * 16 for j in removable_levels(n, t)} for i in d.clients}
    for i, c in d.clients.items():
        c.hold_removable(seeds[i])  # type: ignore[attr-defined]
    d.start()
    d.step()
    d.step(skip={9})
    d.step()
    d.close()
    req = d.inbox[0]
    assert isinstance(req, UnmaskRequest) and req.survivor_count == 9
    refuses(d, 0, dataclasses.replace(req, survivor_count=10), match="survivor count")
    refuses(d, 1, dataclasses.replace(d.inbox[1], survivor_count=8), match="survivor count")
    honest = d.clients[2].receive(roundtrip(d.inbox[2]))[0]
    assert isinstance(honest, UnmaskResponse)
    assert honest.noise_seeds == tuple((j, seeds[2][j]) for j in removable_levels(n, t)
                                       if j > n - 9)

"""RoundContext, domain-separation labels, input encoding and the error hierarchy."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.errors import SecAggError
from secagg.protocols import (
    ConfigError,
    InputError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RoundContext,
    ThresholdError,
    labels,
)
from secagg.protocols.encoding import Aggregate, check_input, decode_aggregate, encode_input
from secagg.sign import SigningKey
from tests.protocols.helpers import make_config


def ctx(**kw: object) -> RoundContext:
    base: dict[str, object] = {"config": make_config("secagg", n=3), "round_id": 1, "dim": 4,
                               "client_ids": [0, 1, 2]}
    base.update(kw)
    return RoundContext(**base)  # type: ignore[arg-type]


def test_context_validation() -> None:
    for bad in ({"client_ids": [0, 0, 1]}, {"client_ids": [0, 1]}, {"client_ids": [0, 1, -1]},
                {"client_ids": [0, 1, 2**32 - 1]}, {"round_id": -1}, {"round_id": 2**64},
                {"dim": 0}):
        with pytest.raises(ConfigError):
            ctx(**bad)
    with pytest.raises(TypeError):
        ctx(config="secagg")
    with pytest.raises(ConfigError):  # passive mode takes no verify keys
        ctx(verify_keys={i: SigningKey.generate().verify_key for i in range(3)})
    active = make_config("secagg", n=3, active=True)
    with pytest.raises(ConfigError):
        ctx(config=active)
    with pytest.raises(ConfigError):
        ctx(config=active, verify_keys={0: SigningKey.generate().verify_key})
    vks = {i: SigningKey.generate().verify_key for i in range(3)}
    c = ctx(config=active, verify_keys=vks)
    assert c.verify_key(1) == vks[1] and c.vector_length == 4 and "round_id=1" in repr(c)


def test_digest_binds_round_dim_ids_and_keys() -> None:
    digests = {ctx().digest, ctx(round_id=2).digest, ctx(dim=5).digest,
               ctx(client_ids=[0, 1, 3]).digest}
    active = make_config("secagg", n=3, active=True)
    for _ in range(2):
        digests.add(ctx(config=active, verify_keys={
            i: SigningKey.generate().verify_key for i in range(3)}).digest)
    assert len(digests) == 6
    assert ctx().digest == ctx(client_ids=[2, 1, 0]).digest


def test_labels_are_separated() -> None:
    c1, c2 = ctx(), ctx(round_id=2)
    made = [
        labels.pair_mask_label(c1, 0, 1), labels.pair_mask_label(c1, 0, 2),
        labels.pair_mask_label(c2, 0, 1), labels.self_mask_label(c1, 0),
        labels.self_mask_label(c1, 1), labels.share_associated_data(c1, 0, 1, bytes(32)),
        labels.share_associated_data(c1, 1, 0, bytes(32)),
        labels.share_associated_data(c1, 0, 1, b"\x01" * 32),
        labels.advert_payload(c1, 0, bytes(32), bytes(32), bytes(32)),
        labels.advert_payload(c1, 0, bytes(32), bytes(32), b"\x01" * 32),
        labels.consistency_payload(c1, (0, 1), bytes(32)),
        labels.consistency_payload(c1, (0, 1, 2), bytes(32)),
        labels.consistency_payload(c1, (0, 1), b"\x01" * 32),
        labels.kex_info(c1, labels.PURPOSE_MASK_SEED, 0, 1),
        labels.kex_info(c1, labels.PURPOSE_SHARE_KEY, 0, 1),
    ]
    assert len(set(made)) == len(made)
    assert labels.pair_mask_label(c1, 0, 1) == labels.pair_mask_label(c1, 1, 0)
    assert labels.kex_info(c1, b"x", 0, 1) == labels.kex_info(c1, b"x", 1, 0)
    assert labels.kex_salt(c1) == c1.digest


def test_check_input() -> None:
    c = ctx()
    x = np.array([0.5, -1.0, 1.0, 0.0])
    assert check_input(c, x, None)[1] == 1.0
    assert check_input(c, x.astype(np.float32), None)[0].dtype == np.float32
    for bad in (np.zeros(3), np.zeros((4, 1)), np.array([0, 0, np.nan, 0]),
                np.array([0, 0, -np.inf, 0]), np.array([0, 0, 1.0001, 0])):
        with pytest.raises(InputError):
            check_input(c, bad, None)
    for bad_type in ([0.0] * 4, np.zeros(4, dtype=np.int64)):
        with pytest.raises(TypeError):
            check_input(c, bad_type, None)
    with pytest.raises(InputError):
        check_input(c, x, 1.0)  # unweighted config


def test_weighted_encoding_round_trip() -> None:
    cfg = make_config("secagg", n=3, weighted=True, max_weight=10.0, clip=2.0)
    c = ctx(config=cfg)
    xs = [np.array([2.0, -2.0, 0.5, 0.0]), np.array([1.0, 1.0, -1.0, 0.25])]
    ws = [10.0, 2.5]
    ring = sum(encode_input(c, x, w) for x, w in zip(xs, ws, strict=True)).astype(np.uint32)
    out = decode_aggregate(c, ring, (0, 1))
    assert out.weight_total == pytest.approx(12.5, abs=1e-3)
    np.testing.assert_allclose(out.values, 10.0 * xs[0] + 2.5 * xs[1], atol=1e-3)
    np.testing.assert_allclose(out.mean, (10.0 * xs[0] + 2.5 * xs[1]) / 12.5, atol=1e-3)
    assert check_input(c, xs[0], None)[1] == 10.0  # default weight: max_weight
    with pytest.raises(ZeroDivisionError):
        _ = Aggregate(np.zeros(1), 0.0, (), np.zeros(1, np.uint32)).mean


def test_error_hierarchy() -> None:
    for cls in (LocalProtocolError, RemoteProtocolError, ThresholdError):
        assert issubclass(cls, ProtocolError) and issubclass(cls, SecAggError)
    assert issubclass(InputError, ValueError) and issubclass(ConfigError, ValueError)
    err = RemoteProtocolError("bad", party=7)
    assert err.party == 7 and "party 7" in str(err)
    assert RemoteProtocolError("bad").party is None

"""secagg.rng and the shared argument checks."""

from __future__ import annotations

import pytest

from secagg import rng
from secagg._check import check_bytes, check_int


def test_random_bytes_length_and_freshness() -> None:
    a, b = rng.random_bytes(32), rng.random_bytes(32)
    assert len(a) == 32 and a != b
    assert rng.random_bytes(0) == b""


@pytest.mark.parametrize("bad", [1.0, "3", None, True])
def test_random_bytes_type(bad: object) -> None:
    with pytest.raises(TypeError, match="n must be int"):
        rng.random_bytes(bad)  # type: ignore[arg-type]


def test_random_bytes_negative() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        rng.random_bytes(-1)


def test_random_below_range_and_spread() -> None:
    draws = {rng.random_below(7) for _ in range(500)}
    assert draws == set(range(7))
    with pytest.raises(ValueError, match="upper"):
        rng.random_below(0)
    with pytest.raises(TypeError, match="upper"):
        rng.random_below(2.0)  # type: ignore[arg-type]


def test_check_int_and_bytes_name_the_parameter() -> None:
    assert check_int("bits", 8, lo=1, hi=32) == 8
    with pytest.raises(TypeError, match="bits"):
        check_int("bits", True)
    with pytest.raises(ValueError, match="bits must be <= 32"):
        check_int("bits", 33, lo=1, hi=32)
    assert check_bytes("seed", bytearray(b"ab"), length=2) == b"ab"
    with pytest.raises(TypeError, match="seed"):
        check_bytes("seed", "ab")
    with pytest.raises(ValueError, match="seed must be exactly 32 bytes"):
        check_bytes("seed", b"ab", length=32)

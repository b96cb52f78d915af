"""Lagrange coefficients at 0 (secagg.shamir): the numpy-grouped products equal a plain
modular reference for every size and width of evaluation points, and still rebuild secrets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import shamir

P = shamir.PRIME


def _reference(xs: list[int]) -> list[int]:
    """l_i = prod_{j != i} x_j / (x_j - x_i) mod p, one inversion per coefficient."""
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % P
                den = den * (xj - xi) % P
        out.append(num * pow(den, -1, P) % P)
    return out


@pytest.mark.parametrize("t", [1, 2, 7, 8, 9, 74, 130])
@pytest.mark.parametrize("top", [10**4, 2**15, 2**16, 2**21 + 3, 2**31 - 1, 2**32 - 1])
def test_coefficients_equal_reference(t: int, top: int) -> None:
    rnd = random.Random(t * 1000003 + top)
    xs = sorted(rnd.sample(range(1, top + 1), t))
    if t > 1:
        xs[-1] = top  # the widest point sets the numpy group size
    assert shamir._lagrange_at_zero(xs) == _reference(xs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=40, unique=True))
def test_coefficients_any_points(xs: list[int]) -> None:
    assert shamir._lagrange_at_zero(xs) == _reference(xs)


def test_coefficients_rebuild_secrets_from_wide_ids() -> None:
    secret = bytes(range(32))
    xs = [2**31 - 5, 2**31 - 1, 2**32 - 1, 7, 1 << 20, 99, 2**31 - 9]
    shares = shamir.split(secret, threshold=5, xs=xs)
    for first in range(3):
        used = shares[first : first + 5]
        assert shamir.combine(used, threshold=5) == secret

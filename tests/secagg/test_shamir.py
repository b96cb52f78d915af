"""Tests for secagg.shamir: the prime, frozen vectors, threshold properties, argument checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import shamir
from secagg.errors import InsufficientSharesError
from secagg.shamir import PRIME, SECRET_BYTES, SHARE_BYTES, Reconstructor, Share, combine, split

# ---------------------------------------------------------------------------------------------
# PRIME is prime, and the smallest one above 2^256.

_SMALL_PRIMES = [q for q in range(2, 400) if all(q % d for d in range(2, math.isqrt(q) + 1))]


def _miller_rabin_witness(n: int, a: int) -> bool:
    """True if base ``a`` proves that odd ``n > 2`` is composite."""
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    x = pow(a, d, n)
    if x in (1, n - 1):
        return False
    for _ in range(r - 1):
        x = x * x % n
        if x == n - 1:
            return False
    return True


def _is_probable_prime(n: int) -> bool:
    if n < 2:
        return False
    for q in _SMALL_PRIMES:
        if n % q == 0:
            return n == q
    return not any(_miller_rabin_witness(n, a) for a in _SMALL_PRIMES)


# Pocklington certificate: for each prime n >= 2^36 in the proof, the full factorisation of
# n - 1 (found once with ECM; checking it is instant). Factors below 2^36 are proved by trial
# division. A truncated factorisation that left a composite cofactor would fail this test.
CERTIFICATE: dict[int, dict[int, int]] = {
    2**256 + 297: {
        2: 3,
        3: 1,
        13: 1,
        67: 1,
        9729922537253: 1,
        1200461269659761894123: 1,
        474233203066845416735444346211990045207: 1,
    },
    9729922537253: {2: 2, 93887: 1, 25908599: 1},
    1200461269659761894123: {2: 1, 13: 1, 37: 1, 167: 1, 7472339746659043: 1},
    7472339746659043: {2: 1, 3: 1, 1489: 1, 1975949: 1, 423287: 1},
    474233203066845416735444346211990045207: {
        2: 1,
        3: 1,
        251: 1,
        106508275638671: 1,
        2956539135407950972181: 1,
    },
    106508275638671: {2: 1, 5: 1, 53: 1, 94483: 1, 2126933: 1},
    2956539135407950972181: {2: 2, 5: 1, 7: 2, 3016876668783623441: 1},
    3016876668783623441: {2: 4, 5: 1, 23: 1, 1151: 1, 1877: 1, 2333: 1, 325301: 1},
}


def _proved_prime(n: int, cert: dict[int, dict[int, int]]) -> bool:
    """Pocklington: if n - 1 = F (fully factored, F^2 > n) and for each prime q | F some a has
    a^(n-1) = 1 and gcd(a^((n-1)/q) - 1, n) = 1 (mod n), then n is prime."""
    if n < 2**36:
        return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))
    factors = cert.get(n)
    # F = n - 1 exactly, so F^2 > n holds and the factorisation must be complete.
    if factors is None or math.prod(q**e for q, e in factors.items()) != n - 1:
        return False
    for q in factors:
        if not _proved_prime(q, cert):
            return False
        if not any(
            pow(a, n - 1, n) == 1 and math.gcd(pow(a, (n - 1) // q, n) - 1, n) == 1
            for a in range(2, 100)
        ):
            return False
    return True


def test_prime_is_proved_prime() -> None:
    assert PRIME == 2**256 + 297
    assert _proved_prime(PRIME, CERTIFICATE)
    assert _is_probable_prime(PRIME)


def test_certificate_checker_can_fail() -> None:
    assert not _proved_prime(PRIME + 2, CERTIFICATE)  # composite, and no certificate
    forged = dict(CERTIFICATE)
    forged[PRIME + 2] = dict(CERTIFICATE[PRIME])
    assert not _proved_prime(PRIME + 2, forged)  # factorisation does not match
    # n = 2^40 + 1 = 257 * 4278255361 is composite, yet its n - 1 = 2^40 is fully factored:
    # only the Pocklington witness condition can reject it.
    n = 2**40 + 1
    assert n % 257 == 0
    assert not _proved_prime(n, {n: {2: 40}})


def test_no_prime_between_2_256_and_prime() -> None:
    # A Miller-Rabin witness is a proof of compositeness, so this part is deterministic.
    for n in range(2**256 + 1, PRIME):
        assert n % 2 == 0 or any(_miller_rabin_witness(n, a) for a in _SMALL_PRIMES[:20]), n


def test_sympy_agrees_if_installed() -> None:
    sympy = pytest.importorskip("sympy")
    assert sympy.isprime(PRIME)
    assert sympy.prevprime(PRIME) < 2**256


# ---------------------------------------------------------------------------------------------
# Frozen vector: the wire format and the arithmetic must not drift.

FROZEN_SECRET = bytes(range(0xA0, 0xC0))
FROZEN_COEFFS = [
    0xC00895843AF6E071A7103B42E7ED4FF22AF66F60813C3016D203293442983197,
    0x8FF3ABB8439347DFC8C71881057B2357A203DC9E7D5DF8DDCC7076130129FC69,
    PRIME - 1,
]
FROZEN_SHARES = {
    1: "00f09de3e0232fcef91880fe6f9a1621f97dabfeb2b34fdfac572d5a03007feb95",
    2: "0060817c8d28e0870a19e683359274dbf28eae03eeaca5fa5c8e81e57046960ee5",
    3: "00f04c6caab5b7cedaacda38fd95c9dc9ae3b7c267a0b806c85eb75d038f002afb",
    7: "006e81978630968b98a836fa3210bca214e02bf8ad3c57a9cb985674ccc7f04259",
    2**32 - 1: "00ed24220ac83f3bae495b6dcb2e8831167aafd45eeb23b851f1b908054ee022a7",
}


def test_frozen_vector_split() -> None:
    shares = shamir._split_with_coefficients(FROZEN_SECRET, FROZEN_COEFFS, list(FROZEN_SHARES))
    assert {s.x: s.to_bytes().hex() for s in shares} == FROZEN_SHARES
    # Independent check of the evaluation (no Horner): f(x) = sum c_k x^k mod p.
    poly = [int.from_bytes(FROZEN_SECRET, "big"), *FROZEN_COEFFS]
    for s in shares:
        assert s.y == sum(c * s.x**k for k, c in enumerate(poly)) % PRIME


def test_frozen_vector_combine() -> None:
    shares = [Share.from_bytes(x, bytes.fromhex(h)) for x, h in FROZEN_SHARES.items()]
    for start in range(2):
        assert combine(shares[start:], threshold=4) == FROZEN_SECRET
    assert combine(shares[::-1], threshold=4) == FROZEN_SECRET


def test_threshold_one_is_the_secret() -> None:
    shares = split(FROZEN_SECRET, threshold=1, xs=[5, 9])
    assert all(s.y == int.from_bytes(FROZEN_SECRET, "big") for s in shares)
    assert combine(shares[1:], threshold=1) == FROZEN_SECRET


# ---------------------------------------------------------------------------------------------
# Properties.


@st.composite
def _sharing(draw: st.DrawFn) -> tuple[bytes, int, list[int]]:
    n = draw(st.integers(1, 10))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    return draw(st.binary(min_size=32, max_size=32)), t, xs


@settings(max_examples=150, deadline=None)
@given(case=_sharing(), data=st.data())
def test_any_t_of_n_reconstruct(case: tuple[bytes, int, list[int]], data: st.DataObject) -> None:
    secret, t, xs = case
    shares = split(secret, threshold=t, xs=xs)
    assert [s.x for s in shares] == xs
    k = data.draw(st.integers(t, len(xs)))
    subset = data.draw(st.permutations(shares))[:k]
    assert combine(subset, threshold=t) == secret
    used = subset[:t]
    rec = Reconstructor([s.x for s in used], threshold=t)
    assert rec.combine([s.y for s in used]) == secret


@settings(max_examples=100, deadline=None)
@given(case=_sharing(), data=st.data())
def test_fewer_than_t_raise(case: tuple[bytes, int, list[int]], data: st.DataObject) -> None:
    secret, t, xs = case
    shares = split(secret, threshold=t, xs=xs)
    k = data.draw(st.integers(0, t - 1))
    subset = data.draw(st.permutations(shares))[:k]
    with pytest.raises(InsufficientSharesError):
        combine(subset, threshold=t)
    if k:
        with pytest.raises(InsufficientSharesError):
            Reconstructor([s.x for s in subset], threshold=t)


def _interpolate(points: list[tuple[int, int]], x: int) -> int:
    """Value at x of the unique polynomial of degree < len(points) through the points."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if j != i:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total += yi * num * pow(den, -1, PRIME)
    return total % PRIME


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), fake=st.binary(min_size=32, max_size=32))
def test_t_minus_one_shares_fit_every_secret(secret: bytes, fake: bytes) -> None:
    # Information-theoretic secrecy, shown for t = 3: the two shares at x = 1, 2 of `secret`,
    # completed by one more point, interpolate to ANY chosen `fake` secret.
    s1, s2, _ = split(secret, threshold=3, xs=[1, 2, 3])
    pts = [(0, int.from_bytes(fake, "big")), (1, s1.y), (2, s2.y)]
    forged_third = Share(3, _interpolate(pts, 3))
    assert combine([s1, s2, forged_third], threshold=3) == fake


def test_reconstructor_many_secrets_same_holders() -> None:
    xs = [3, 17, 4, 99, 1000]
    secrets = [bytes([i]) * 32 for i in range(20)]
    all_shares = [split(s, threshold=3, xs=xs) for s in secrets]
    holders = [99, 3, 1000]
    rec = Reconstructor(holders, threshold=3)
    assert rec.xs == (99, 3, 1000) and rec.threshold == 3
    for s, shares in zip(secrets, all_shares, strict=True):
        by_x = {sh.x: sh.y for sh in shares}
        assert rec.combine([by_x[x] for x in holders]) == s


def test_inconsistent_shares_detected_when_out_of_range() -> None:
    # Two shares of a degree-1 polynomial whose constant term is >= 2^256.
    ys = [(2**256 + 5 + 7 * x) % PRIME for x in (1, 2)]
    with pytest.raises(InsufficientSharesError, match="inconsistent"):
        combine([Share(1, ys[0]), Share(2, ys[1])], threshold=2)
    with pytest.raises(InsufficientSharesError, match="inconsistent"):
        Reconstructor([1, 2], threshold=2).combine(ys)


def test_duplicate_x_refused() -> None:
    shares = split(FROZEN_SECRET, threshold=2, xs=[1, 2, 3])
    with pytest.raises(InsufficientSharesError, match="distinct"):
        combine([shares[0], shares[0], shares[1]], threshold=2)
    with pytest.raises(InsufficientSharesError, match="distinct"):
        combine([shares[0], shares[1], Share(1, 5)], threshold=2)
    with pytest.raises(InsufficientSharesError, match="distinct"):
        Reconstructor([4, 4], threshold=2)
    with pytest.raises(InsufficientSharesError, match="distinct"):
        split(FROZEN_SECRET, threshold=2, xs=[1, 2, 1])


def test_combine_uses_first_threshold_shares() -> None:
    shares = split(FROZEN_SECRET, threshold=2, xs=[1, 2, 3])
    garbage = Share(3, 12345)
    assert combine([shares[0], shares[1], garbage], threshold=2) == FROZEN_SECRET


def test_coefficients_are_random() -> None:
    a = split(FROZEN_SECRET, threshold=2, xs=[1, 2])
    b = split(FROZEN_SECRET, threshold=2, xs=[1, 2])
    assert a[0].y != b[0].y  # fails with probability 1/p


# ---------------------------------------------------------------------------------------------
# Share encoding and argument checks.


@settings(max_examples=100, deadline=None)
@given(x=st.integers(1, PRIME - 1), y=st.integers(0, PRIME - 1))
def test_share_bytes_round_trip(x: int, y: int) -> None:
    b = Share(x, y).to_bytes()
    assert len(b) == SHARE_BYTES
    assert Share.from_bytes(x, b) == Share(x, y)


def test_share_checks() -> None:
    with pytest.raises(ValueError, match="y >= p"):
        Share.from_bytes(1, PRIME.to_bytes(SHARE_BYTES, "big"))
    with pytest.raises(ValueError, match="x"):
        Share.from_bytes(0, bytes(SHARE_BYTES))
    with pytest.raises(ValueError, match="x"):
        Share.from_bytes(PRIME, bytes(SHARE_BYTES))
    with pytest.raises(TypeError, match="x"):
        Share.from_bytes(1.0, bytes(SHARE_BYTES))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="b must be bytes"):
        Share.from_bytes(1, "00" * SHARE_BYTES)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="b must be exactly 33"):
        Share.from_bytes(1, bytes(32))
    with pytest.raises(ValueError, match="y"):
        Share(1, PRIME)
    with pytest.raises(ValueError, match="y"):
        Share(1, -1)
    with pytest.raises(TypeError, match="y"):
        Share(1, True)
    assert str(Share(1, 123456789)).find("123456789") == -1  # y kept out of repr


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"secret": "s" * 32}, TypeError, "secret"),
        ({"secret": bytes(31)}, ValueError, "secret"),
        ({"secret": bytes(33)}, ValueError, "secret"),
        ({"threshold": 2.0}, TypeError, "threshold"),
        ({"threshold": 0}, ValueError, "threshold"),
        ({"threshold": 4}, ValueError, "threshold"),
        ({"xs": {1, 2, 3}}, TypeError, "xs"),
        ({"xs": [1, 2, "3"]}, TypeError, r"xs\[2\]"),
        ({"xs": [1, 0, 3]}, ValueError, r"xs\[1\]"),
        ({"xs": [1, 2, 2**32]}, ValueError, r"xs\[2\]"),
    ],
)
def test_split_checks(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    args: dict[str, object] = {"secret": bytes(SECRET_BYTES), "threshold": 2, "xs": [1, 2, 3]}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        split(**args)  # type: ignore[arg-type]


def test_combine_and_reconstructor_checks() -> None:
    shares = split(bytes(32), threshold=2, xs=[1, 2])
    with pytest.raises(TypeError, match="threshold"):
        combine(shares, threshold="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        combine(shares, threshold=0)
    with pytest.raises(TypeError, match=r"shares\[1\]"):
        combine([shares[0], (2, shares[1].y)], threshold=2)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="shares"):
        combine(iter(shares), threshold=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exactly threshold"):
        Reconstructor([1, 2, 3], threshold=2)
    with pytest.raises(ValueError, match=r"xs\[0\]"):
        Reconstructor([0, 1], threshold=2)
    with pytest.raises(TypeError, match="threshold"):
        Reconstructor([1, 2], threshold=None)  # type: ignore[arg-type]
    rec = Reconstructor([1, 2], threshold=2)
    with pytest.raises(InsufficientSharesError):
        rec.combine([shares[0].y])
    with pytest.raises(ValueError, match="exactly threshold"):
        rec.combine([1, 2, 3])
    with pytest.raises(TypeError, match=r"ys\[1\]"):
        rec.combine([1, 2.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"ys\[0\]"):
        rec.combine([PRIME, 1])
    with pytest.raises(TypeError, match="ys"):
        rec.combine(b"\x01\x02")

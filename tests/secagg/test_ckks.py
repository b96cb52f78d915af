"""CKKS contexts, encryption, server-side addition and exact decryption (TenSEAL 0.3.18)."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.ckks import (
    PRESETS,
    CkksPublicContext,
    CkksSecretContext,
    SlotLayout,
    add_ciphertexts,
    decrypt_floats,
    decrypt_ints,
    encrypt_floats,
    encrypt_ints,
)
from secagg.ckks_params import FRESH_NOISE_SIGMA_FACTOR
from secagg.ckks_seeded import seeded_available
from secagg.ckks_wire import CHUNK_HEADER_BYTES, encode_envelope, vector_proto
from secagg.errors import CkksError, RangeError, SecAggError

EXACT = PRESETS["exact-4096"]
RNG = np.random.default_rng(20240601)


@pytest.fixture(scope="module")
def ctx() -> CkksSecretContext:
    return CkksSecretContext.generate(EXACT)


@pytest.fixture(scope="module")
def other() -> CkksSecretContext:
    return CkksSecretContext.generate(EXACT)


@pytest.fixture(scope="module")
def fctx() -> CkksSecretContext:
    return CkksSecretContext.generate(PRESETS["float-4096"])


L12 = SlotLayout.for_values(preset=EXACT, value_bits=12, n_max=100)


def _vecs(n: int, count: int, bits: int) -> list[np.ndarray]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1)
    vecs = [RNG.integers(lo, hi, count) for _ in range(n)]
    for v in vecs:  # extremes: the coefficients are largest when all clients agree
        v[:100] = lo
        v[100:150] = hi - 1
    return vecs


def test_sum_of_100_quantized_vectors_is_exact(ctx: CkksSecretContext) -> None:
    count = 5000
    vecs = _vecs(100, count, 12)
    uploads = [encrypt_ints(ctx, v, L12) for v in vecs]
    assert all(len(u) == 2 for u in uploads)  # 5000 values / 4096 per ciphertext
    total = add_ciphertexts(ctx.public_context(), uploads)
    out = decrypt_ints(ctx, total, count=count, layout=L12, n=100)
    np.testing.assert_array_equal(out, np.sum(vecs, axis=0))
    assert out[60] == -2048 * 100 and out[120] == 2047 * 100


@pytest.mark.parametrize(
    ("value_bits", "n_max", "payload"), [(14, 100, 42), (45, 1, 45), (15, 1, 45), (21, 2, 44)]
)
def test_payload_at_the_limit_is_exact(
    ctx: CkksSecretContext, value_bits: int, n_max: int, payload: int
) -> None:
    # Payloads at the measured limit (42 bits at n=100, 45 at n=1), every summand extreme.
    lay = SlotLayout.for_values(preset=EXACT, value_bits=value_bits, n_max=n_max)
    assert lay.payload_bits == payload
    n = n_max
    lo, hi = -(2 ** (value_bits - 1)), 2 ** (value_bits - 1) - 1
    count = lay.values_per_ciphertext
    vecs = [RNG.integers(lo, hi + 1, count) for _ in range(n)]
    for v in vecs:
        v[: count // 4] = lo
        v[count // 4 : count // 2] = hi
    total = add_ciphertexts(ctx.public_context(), [encrypt_ints(ctx, v, lay) for v in vecs])
    np.testing.assert_array_equal(
        decrypt_ints(ctx, total, count=count, layout=lay, n=n), np.sum(vecs, axis=0)
    )


@settings(max_examples=8, deadline=None)
@given(
    value_bits=st.integers(1, 20),
    n=st.integers(1, 4),
    count=st.integers(1, 9000),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_length_round_trip(
    ctx: CkksSecretContext, value_bits: int, n: int, count: int, seed: int
) -> None:
    lay = SlotLayout.for_values(preset=EXACT, value_bits=value_bits, n_max=4)
    gen = np.random.default_rng(seed)
    lo, hi = -(2 ** (value_bits - 1)), 2 ** (value_bits - 1)
    vecs = [gen.integers(lo, hi, count) for _ in range(n)]
    uploads = [encrypt_ints(ctx, v, lay) for v in vecs]
    assert len(uploads[0]) == lay.ciphertexts_for(count)
    total = add_ciphertexts(ctx.public_context(), uploads)
    out = decrypt_ints(ctx, total, count=count, layout=lay, n=n)
    np.testing.assert_array_equal(out, np.sum(vecs, axis=0))


def test_bytes_per_value(ctx: CkksSecretContext) -> None:
    count = 4 * L12.values_per_ciphertext
    v = RNG.integers(-2048, 2048, count)
    full = sum(map(len, encrypt_ints(ctx, v, L12, seeded=False))) / count
    seeded = sum(map(len, encrypt_ints(ctx, v, L12))) / count
    print(f"\nexact-4096, 2 lanes: {seeded:.2f} B/value seeded, {full:.2f} unseeded")
    assert full <= 16.1  # 32 B/slot of zstd'd 60-bit words over 2 lanes, plus the header
    if seeded_available():
        assert seeded <= 8.1  # seeding halves it: 1/7 of NVFlare's 57 B/value
    assert min(seeded, full) <= 16


def test_seeded_and_unseeded_chunks_add(ctx: CkksSecretContext) -> None:
    a, b = RNG.integers(-2048, 2048, 3000), RNG.integers(-2048, 2048, 3000)
    ua = encrypt_ints(ctx, a, L12, seeded=False)
    ub = encrypt_ints(ctx, b, L12)
    total = add_ciphertexts(ctx.public_context(), [ua, ub])
    np.testing.assert_array_equal(decrypt_ints(ctx, total, count=3000, layout=L12, n=2), a + b)


def test_add_in_slices_for_worker_processes(ctx: CkksSecretContext) -> None:
    count = 3 * L12.values_per_ciphertext
    vecs = [RNG.integers(-2048, 2048, count) for _ in range(3)]
    uploads = [encrypt_ints(ctx, v, L12) for v in vecs]
    pub = ctx.public_context()
    parts = [add_ciphertexts(pub, [u[k : k + 1] for u in uploads]) for k in range(3)]
    total = [c for part in parts for c in part]
    out = decrypt_ints(ctx, total, count=count, layout=L12, n=3)
    np.testing.assert_array_equal(out, np.sum(vecs, axis=0))
    with pytest.raises(CkksError):  # slices that do not line up
        add_ciphertexts(pub, [uploads[0][0:1], uploads[1][1:2]])


def test_noise_model_holds(ctx: CkksSecretContext) -> None:
    # The layout maths assumes sigma_1 <= 3.3 * sqrt(N/2) (147 measured at N=4096).
    scale = 2.0**30
    sealed = ctx.encrypt_chunks([np.zeros(2048)] * 20, scale, seeded=True)
    errs = [
        ts.ckks_vector_from(ctx.tenseal_context(), vector_proto(c, slots=2048, scale=scale))
        for c in sealed
    ]
    e = np.concatenate([np.asarray(v.decrypt()) for v in errs]) * scale
    assert 100 < e.std() < FRESH_NOISE_SIGMA_FACTOR * np.sqrt(2048)


def test_float_sum_relative_error(fctx: CkksSecretContext) -> None:
    count = 5000
    vecs = [RNG.standard_normal(count) for _ in range(30)]
    vecs.append(RNG.standard_normal(count).astype(np.float32).astype(np.float64))
    total = add_ciphertexts(fctx.public_context(), [encrypt_floats(fctx, v) for v in vecs])
    out = decrypt_floats(fctx, total, count=count, n=len(vecs))
    exact = np.sum(vecs, axis=0)
    rel = np.abs(out - exact).max() / np.abs(exact).max()
    print(f"\nfloat-4096 relative error {rel:.2e}")
    assert rel < 1e-6


def test_nvflare_preset_works() -> None:
    c = CkksSecretContext.generate(PRESETS["nvflare-8192"])
    x = RNG.standard_normal(100)
    total = add_ciphertexts(c.public_context(), [encrypt_floats(c, x)] * 3)
    np.testing.assert_allclose(decrypt_floats(c, total, count=100, n=3), 3 * x, atol=1e-6)


def test_public_context_has_no_key_and_cannot_decrypt(ctx: CkksSecretContext) -> None:
    blob = ctx.public_context().to_bytes()
    assert len(blob) < 200  # parameters and context id only
    pub = CkksPublicContext.from_bytes(blob)
    assert pub.to_bytes() == blob
    assert pub.fingerprint == hashlib.sha256(blob).digest() == ctx.fingerprint
    t = pub.tenseal_context()
    assert not t.has_secret_key() and not t.is_private() and t.is_public()
    assert not t.has_relin_keys() and not t.has_galois_keys()
    sealed = encrypt_ints(ctx, np.arange(10), L12)
    with pytest.raises(TypeError):
        decrypt_ints(pub, sealed, count=10, layout=L12, n=1)  # type: ignore[arg-type]
    vec = ts.ckks_vector_from(t, vector_proto(sealed[0][CHUNK_HEADER_BYTES:], slots=5, scale=1.0))
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()
    with pytest.raises(ValueError):
        ts.ckks_vector(t, [1.0], 2.0**20)  # cannot encrypt either
    with pytest.raises(TypeError):
        encrypt_ints(pub, np.arange(3), L12)  # type: ignore[arg-type]


def test_secret_context_round_trip(ctx: CkksSecretContext, other: CkksSecretContext) -> None:
    blob = ctx.serialize_secret()
    again = CkksSecretContext.from_bytes(blob)
    for c in (ctx, again):
        t = c.tenseal_context()
        assert t.has_secret_key() and t.is_private()
        assert not t.has_relin_keys() and not t.has_galois_keys()  # addition only
    assert again.fingerprint == ctx.fingerprint and again.context_id == ctx.context_id
    assert other.fingerprint != ctx.fingerprint  # same preset, different context id
    x = RNG.integers(-2048, 2048, 100)
    out = decrypt_ints(again, encrypt_ints(ctx, x, L12), count=100, layout=L12, n=1)
    np.testing.assert_array_equal(out, x)
    out = decrypt_ints(ctx, encrypt_ints(again, x, L12), count=100, layout=L12, n=1)
    np.testing.assert_array_equal(out, x)


def _payload(blob: bytes, name: str) -> bytes:
    return blob[6 + len(name) + 32 :]  # magic, version, name length, name, context id


def test_context_bytes_rejected(ctx: CkksSecretContext) -> None:
    pub = ctx.public_context().to_bytes()
    sec = ctx.serialize_secret()
    # A "public" context that smuggles the secret key, or any other key material.
    smuggled = encode_envelope(b"SAcp", "exact-4096", ctx.context_id, _payload(sec, "exact-4096"))
    everything = ctx.tenseal_context().serialize(save_secret_key=True)
    relin = ts.context(  # TenSEAL's default: relinearisation keys, no secret key
        ts.SCHEME_TYPE.CKKS,
        4096,
        coeff_mod_bit_sizes=[60, 49],
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    ).serialize(save_secret_key=False)
    for bad in (
        smuggled,
        encode_envelope(b"SAcp", "exact-4096", ctx.context_id, everything),
        encode_envelope(b"SAcp", "exact-4096", ctx.context_id, relin),
        encode_envelope(b"SAcp", "nope", ctx.context_id, b""),
        encode_envelope(b"SAcp", "float-4096", ctx.context_id, _payload(pub, "exact-4096")),
        pub[:-1],
        pub[:10],
        sec,
        b"",
        RNG.bytes(300),
    ):
        with pytest.raises(CkksError):
            CkksPublicContext.from_bytes(bad)
    float_ctx = CkksSecretContext.generate(PRESETS["float-4096"]).serialize_secret()
    forged = encode_envelope(
        b"SAcs", "exact-4096", ctx.context_id, _payload(float_ctx, "xxxxxxxxxx")
    )
    for bad in (sec[:-1], sec[:100], sec[:-5000], pub, forged, RNG.bytes(5000)):
        with pytest.raises(CkksError):
            CkksSecretContext.from_bytes(bad)
    with pytest.raises(TypeError):
        CkksSecretContext.from_bytes("x")  # type: ignore[arg-type]


def test_truncated_and_garbage_chunks(ctx: CkksSecretContext) -> None:
    x = RNG.integers(-2048, 2048, 200)
    (chunk,) = encrypt_ints(ctx, x, L12)
    pub = ctx.public_context()
    cuts = [0, 1, 10, CHUNK_HEADER_BYTES - 1, CHUNK_HEADER_BYTES, CHUNK_HEADER_BYTES + 15]
    cuts += [len(chunk) // 2, len(chunk) - 1]
    garbage = chunk[:CHUNK_HEADER_BYTES] + RNG.bytes(len(chunk) - CHUNK_HEADER_BYTES)
    # Garbage behind a valid SEAL header reaches SEAL's own parser: refused, no crash.
    seal_header = chunk[CHUNK_HEADER_BYTES : CHUNK_HEADER_BYTES + 16]
    behind_header = chunk[: CHUNK_HEADER_BYTES + 16] + RNG.bytes(len(chunk) - len(seal_header))
    behind_header = behind_header[: len(chunk)]
    bad_chunks = [chunk[:c] for c in cuts] + [garbage, behind_header, RNG.bytes(len(chunk))]
    bad_chunks.append(chunk + b"\x00")
    for bad in bad_chunks:
        with pytest.raises(CkksError):
            add_ciphertexts(pub, [[chunk], [bad]])
        with pytest.raises(CkksError):
            decrypt_ints(ctx, [bad], count=200, layout=L12, n=1)


def test_bit_flips_never_give_a_wrong_sum(ctx: CkksSecretContext) -> None:
    x = RNG.integers(-2048, 2048, 1000)
    (chunk,) = encrypt_ints(ctx, x, L12)
    positions = list(range(CHUNK_HEADER_BYTES + 20)) + list(
        RNG.integers(CHUNK_HEADER_BYTES, len(chunk), 40)
    )
    wrong = 0
    for pos in positions:
        bad = bytearray(chunk)
        bad[pos] ^= 1 << int(RNG.integers(0, 8))
        try:
            out = decrypt_ints(ctx, [bytes(bad)], count=1000, layout=L12, n=1)
        except CkksError:
            continue
        wrong += not np.array_equal(out, x)
    assert wrong == 0


def test_other_context_refused(ctx: CkksSecretContext, other: CkksSecretContext) -> None:
    x = RNG.integers(-2048, 2048, 100)
    mine, theirs = encrypt_ints(ctx, x, L12), encrypt_ints(other, x, L12)
    with pytest.raises(CkksError, match="another context"):
        add_ciphertexts(ctx.public_context(), [mine, theirs])
    with pytest.raises(CkksError, match="another context"):
        decrypt_ints(ctx, theirs, count=100, layout=L12, n=1)
    # Even with the fingerprint forged, the wrong key decrypts to noise and is refused.
    forged = theirs[0][: CHUNK_HEADER_BYTES - 32] + ctx.fingerprint + theirs[0][CHUNK_HEADER_BYTES:]
    with pytest.raises(CkksError, match="not a valid packing"):
        decrypt_ints(ctx, [forged], count=100, layout=L12, n=1)


def test_chunk_count_order_and_terms(ctx: CkksSecretContext) -> None:
    pub = ctx.public_context()
    count = 9000  # three chunks
    a, b = RNG.integers(-2048, 2048, count), RNG.integers(-2048, 2048, count)
    ua, ub = encrypt_ints(ctx, a, L12), encrypt_ints(ctx, b, L12)
    assert len(ua) == 3
    with pytest.raises(CkksError, match="expected 3"):
        decrypt_ints(ctx, ua[:2], count=count, layout=L12, n=1)
    with pytest.raises(CkksError, match="expected 2"):
        decrypt_ints(ctx, ua, count=5000, layout=L12, n=1)
    with pytest.raises(CkksError):
        decrypt_ints(ctx, [ua[1], ua[0], ua[2]], count=count, layout=L12, n=1)
    with pytest.raises(CkksError, match="same"):
        add_ciphertexts(pub, [ua, ub[:2]])
    with pytest.raises(CkksError):
        add_ciphertexts(pub, [ua, [ub[0], ub[2], ub[1]]])
    total = add_ciphertexts(pub, [ua, ub])
    with pytest.raises(CkksError, match="terms"):
        decrypt_ints(ctx, total, count=count, layout=L12, n=1)  # two summands, not one
    with pytest.raises(CkksError):  # another layout's chunks
        lay = SlotLayout.for_values(preset=EXACT, value_bits=12, n_max=50)
        decrypt_ints(ctx, total, count=count, layout=lay, n=2)
    small = SlotLayout.for_values(preset=EXACT, value_bits=12, n_max=2)
    three = [encrypt_ints(ctx, a[:10], small) for _ in range(3)]
    with pytest.raises(CkksError, match="n_max"):
        add_ciphertexts(pub, three)
    # A header edit (terms) is caught by the header check.
    h = bytearray(total[0])
    struct.pack_into("<I", h, 22, 1)
    with pytest.raises(CkksError):
        decrypt_ints(ctx, [bytes(h), *total[1:]], count=count, layout=L12, n=2)


def test_argument_errors(ctx: CkksSecretContext, fctx: CkksSecretContext) -> None:
    with pytest.raises(RangeError):
        encrypt_ints(ctx, np.array([2048]), L12)
    with pytest.raises(TypeError):
        encrypt_ints(ctx, np.array([1.5]), L12)
    with pytest.raises(TypeError):
        encrypt_ints(ctx, [1, 2], L12)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encrypt_ints(ctx, np.array([], dtype=np.int64), L12)
    with pytest.raises(ValueError, match="layout"):
        encrypt_ints(CkksSecretContext.generate(PRESETS["exact-4096-wide"]), np.arange(3), L12)
    with pytest.raises(ValueError):
        encrypt_floats(ctx, np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        encrypt_floats(fctx, np.array([1.0, np.nan]))
    with pytest.raises(RangeError):
        encrypt_floats(fctx, np.array([2.0**18]))
    with pytest.raises(TypeError):
        encrypt_floats(fctx, np.array([1, 2]))
    sealed = encrypt_ints(ctx, np.arange(5), L12)
    with pytest.raises(ValueError):
        decrypt_ints(ctx, sealed, count=5, layout=L12, n=0)
    with pytest.raises(ValueError):
        decrypt_ints(ctx, sealed, count=5, layout=L12, n=101)
    with pytest.raises(ValueError):
        add_ciphertexts(ctx.public_context(), [])
    with pytest.raises(TypeError):
        add_ciphertexts(ctx, [sealed])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        add_ciphertexts(ctx.public_context(), [sealed[0]])  # type: ignore[list-item]
    with pytest.raises(CkksError):  # int chunks are not float chunks
        decrypt_floats(fctx, encrypt_ints(ctx, np.arange(5), L12), count=5, n=1)
    assert issubclass(CkksError, SecAggError)

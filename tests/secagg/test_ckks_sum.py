"""The running server-side sum: equals add_ciphertexts, checks every chunk, stays atomic."""

from __future__ import annotations

import numpy as np
import pytest

from secagg.ckks import (
    PRESETS,
    CkksSecretContext,
    SlotLayout,
    add_ciphertexts,
    decrypt_ints,
    encrypt_ints,
)
from secagg.ckks_sum import CkksSum
from secagg.ckks_wire import CHUNK_HEADER_BYTES
from secagg.errors import CkksError

EXACT = PRESETS["exact-4096"]
LAYOUT = SlotLayout.for_values(preset=EXACT, value_bits=16, n_max=3)
COUNT = LAYOUT.values_per_ciphertext + 10  # two chunks, the last one partial


@pytest.fixture(scope="module")
def ctx() -> CkksSecretContext:
    return CkksSecretContext.generate(EXACT)


@pytest.fixture(scope="module")
def uploads(ctx: CkksSecretContext) -> tuple[list[np.ndarray], list[list[bytes]]]:
    gen = np.random.default_rng(7)
    xs = [gen.integers(-(2**15), 2**15, COUNT) for _ in range(3)]
    return xs, [encrypt_ints(ctx, x, LAYOUT) for x in xs]


def test_running_sum_equals_batch_sum(ctx: CkksSecretContext, uploads: tuple) -> None:
    xs, cts = uploads
    acc = CkksSum(ctx.public_context(), LAYOUT, count=COUNT)
    assert acc.chunks == 2 and acc.terms == 0
    for c in cts:
        acc.add(c)
    got = decrypt_ints(ctx, acc.result(), count=COUNT, layout=LAYOUT, n=3)
    np.testing.assert_array_equal(got, xs[0] + xs[1] + xs[2])
    batch = decrypt_ints(ctx, add_ciphertexts(ctx.public_context(), cts), count=COUNT,
                         layout=LAYOUT, n=3)
    np.testing.assert_array_equal(got, batch)
    with pytest.raises(CkksError, match="n_max"):
        acc.add(cts[0])  # a fourth summand would overflow the lanes


def test_shards_of_positions_concatenate_to_the_sum(ctx: CkksSecretContext,
                                                    uploads: tuple) -> None:
    xs, cts = uploads
    pub = ctx.public_context()
    shards = [CkksSum(pub, LAYOUT, count=COUNT, positions=range(i, i + 1)) for i in (0, 1)]
    for c in cts:
        for i, shard in enumerate(shards):
            shard.add(c[i : i + 1])
    with pytest.raises(CkksError):
        shards[0].add(cts[0][1:])  # the other position
    full = shards[0].result() + shards[1].result()
    got = decrypt_ints(ctx, full, count=COUNT, layout=LAYOUT, n=3)
    np.testing.assert_array_equal(got, xs[0] + xs[1] + xs[2])
    for bad in (range(0), range(0, 3), range(0, 2, 2)):
        with pytest.raises(ValueError):
            CkksSum(pub, LAYOUT, count=COUNT, positions=bad)
    with pytest.raises(TypeError):
        CkksSum(pub, LAYOUT, count=COUNT, positions=[0])  # type: ignore[arg-type]


def test_a_bad_contribution_leaves_the_sum_untouched(ctx: CkksSecretContext,
                                                     uploads: tuple) -> None:
    xs, cts = uploads
    acc = CkksSum(ctx.public_context(), LAYOUT, count=COUNT)
    acc.add(cts[0])
    late = bytearray(cts[1][1])
    late[-5] ^= 0xFF  # the second chunk fails only once SEAL parses it (or not at all)
    bad = [
        cts[1][:1],  # chunk count
        [cts[1][0][:-1], cts[1][1]],  # truncated
        [cts[1][1], cts[1][0]],  # positions swapped
        [cts[1][0], bytes(late)[:CHUNK_HEADER_BYTES + 20]],
        encrypt_ints(CkksSecretContext.generate(EXACT), xs[1], LAYOUT),  # another context
        encrypt_ints(ctx, xs[1][:-20], LAYOUT),  # another length (in slots)
        add_ciphertexts(ctx.public_context(), [cts[1], cts[2]]),  # not fresh (terms 2)
    ]
    for b in bad:
        with pytest.raises(CkksError):
            acc.add(b)
        assert acc.terms == 1
    got = decrypt_ints(ctx, acc.result(), count=COUNT, layout=LAYOUT, n=1)
    np.testing.assert_array_equal(got, xs[0])


def test_argument_checks(ctx: CkksSecretContext) -> None:
    pub = ctx.public_context()
    with pytest.raises(TypeError):
        CkksSum(ctx, LAYOUT, count=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CkksSum(pub, "layout", count=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CkksSum(pub, LAYOUT, count=0)
    wide = SlotLayout.for_values(preset=PRESETS["exact-4096-wide"], value_bits=16, n_max=3)
    with pytest.raises(ValueError):
        CkksSum(pub, wide, count=3)
    acc = CkksSum(pub, LAYOUT, count=3)
    with pytest.raises(ValueError):
        acc.result()
    with pytest.raises(TypeError):
        acc.add(b"chunk")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        acc.add(["chunk"])  # type: ignore[list-item]

"""Server side of the unmask step, batched for large cohorts and long vectors.

Same words as :mod:`secagg.protocols.unmasking` (the one-secret-at-a-time reference, which
the tests compare against), arranged so that the work is the irreducible part:

1. Reconstruct: secrets that share ``t`` holders share one Lagrange precomputation
   (:mod:`.holders`); each secret is then ``t`` multiplications.
2. Key agreement: each rebuilt mask key is checked against its advertised public key, and
   one X25519 + HKDF per (dropped client, surviving neighbour) recomputes the pair seed.
3. Mask expansion: every self mask and every recovered pairwise mask is added into the sum
   in one chunked pass over it (:func:`secagg.prg.add_masks_into`).

``trace`` (optional) is called with the name of each step as it starts, so a caller with a
clock can time them; this module has none.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

import numpy as np
import numpy.typing as npt

from secagg import kex, prg
from secagg.errors import InsufficientSharesError, InvalidKeyError
from secagg.protocols import labels
from secagg.protocols.context import RoundContext
from secagg.protocols.errors import RemoteProtocolError
from secagg.protocols.holders import group_by_holders
from secagg.shamir import Reconstructor

__all__ = ["Answers", "recover_secrets", "strip_masks"]

Answers = Mapping[int, Mapping[int, bytes]]
"""``{holder: {owner: 33-byte share}}``: what each holder answered with."""

Trace = Callable[[str], None]


def recover_secrets(
    holders: Mapping[int, Collection[int]], answers: Answers, order: Iterable[int],
    threshold: int,
) -> dict[int, bytes]:
    """Rebuild the 32-byte secret of every owner in ``holders`` from ``threshold`` shares.

    ``holders[u]`` lists who answered with a share of ``u``'s secret (``answers[h][u]``).
    ``order`` lists the owners so that neighbours share holders (ring order); any order gives
    the same secrets, only more or fewer Lagrange precomputations.

    Raises:
        ThresholdError: fewer than ``threshold`` shares of some secret (``party`` = owner).
        RemoteProtocolError: a secret's shares are inconsistent (``party`` = owner).
    """
    out: dict[int, bytes] = {}
    for used, owners in group_by_holders(order, holders, threshold):
        rec = Reconstructor([h + 1 for h in used], threshold=threshold)
        rows = [answers[h] for h in used]
        for u in owners:
            try:
                out[u] = rec.combine([int.from_bytes(row[u], "big") for row in rows])
            except InsufficientSharesError:
                raise RemoteProtocolError("inconsistent shares of a secret", party=u) from None
    return out


def strip_masks(
    ctx: RoundContext,
    acc: npt.NDArray[np.uint32],
    *,
    seeds: Mapping[int, bytes],
    mask_keys: Mapping[int, bytes],
    public_keys: Mapping[int, bytes],
    neighbours: Callable[[int], frozenset[int]],
    workers: int = 1,
    trace: Trace | None = None,
) -> int:
    """Strip the self masks of ``seeds``' owners and the pairwise masks of ``mask_keys``'.

    ``acc`` is the ring sum of the survivors' masked inputs (the keys of ``seeds``); it is
    updated in place and reduced mod ``2^bits``.
    Returns the keystream words expanded.

    Raises:
        RemoteProtocolError: a reconstructed mask key does not match its public key, or a
            peer key is degenerate (``acc`` is then unchanged).
    """
    if trace is not None:
        trace("key_agreement")
    masks = [(prg.MaskPRG(seed, label=labels.self_mask_label(ctx, u)), True)
             for u, seed in seeds.items()]
    salt = labels.kex_salt(ctx)
    for u, raw in mask_keys.items():
        key = kex.KeyPair.from_private_bytes(raw)
        if key.public_bytes() != public_keys[u]:
            raise RemoteProtocolError("mask-key shares rebuild a key that was not advertised",
                                      party=u)
        for v in sorted(neighbours(u) & seeds.keys()):
            try:
                pair_seed = kex.agree(key, public_keys[v], salt=salt,
                                      info=labels.kex_info(ctx, labels.PURPOSE_MASK_SEED, u, v))
            except InvalidKeyError:
                raise RemoteProtocolError("degenerate public key", party=v) from None
            # v added +PRG if v < u, else -PRG: undo exactly that.
            masks.append((prg.MaskPRG(pair_seed, label=labels.pair_mask_label(ctx, u, v)),
                          v < u))
    if trace is not None:
        trace("mask_expansion")
    prg.add_masks_into(acc, masks, bits=ctx.config.bits, workers=workers)
    return len(masks) * len(acc)

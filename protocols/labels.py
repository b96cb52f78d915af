"""Domain separation: every HKDF info, PRG label, AEAD associated data and signed payload.

All of them start with a distinct ASCII tag and bind the round context digest (config, round,
dimension, cohort) plus the parties involved, in a fixed-width big-endian encoding, so no value
made for one purpose, pair or round is ever valid for another.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from protocols.context import RoundContext
from secagg import kex

__all__ = [
    "LABEL_VERSION",
    "advert_payload",
    "consistency_payload",
    "kex_info",
    "kex_salt",
    "pair_mask_label",
    "self_mask_label",
    "share_associated_data",
]

LABEL_VERSION = 1
PURPOSE_SHARE_KEY = b"share-encryption"
PURPOSE_MASK_SEED = b"pairwise-mask"


def _pair(a: int, b: int) -> bytes:
    lo, hi = (a, b) if a < b else (b, a)
    return struct.pack(">II", lo, hi)


def kex_salt(ctx: RoundContext) -> bytes:
    """HKDF salt of every pairwise key of the round: the context digest."""
    return ctx.digest


def kex_info(ctx: RoundContext, purpose: bytes, a: int, b: int) -> bytes:
    """HKDF info for the key of the unordered pair ``{a, b}`` for ``purpose``."""
    return kex.pair_info(
        protocol=ctx.config.protocol.value.encode(), version=LABEL_VERSION,
        round_id=ctx.round_id, purpose=purpose, a=a, b=b,
    )


def pair_mask_label(ctx: RoundContext, a: int, b: int) -> bytes:
    """PRG label of the pairwise mask of ``{a, b}``."""
    return b"secagg/v1/mask/pair" + ctx.digest + struct.pack(">Q", ctx.round_id) + _pair(a, b)


def self_mask_label(ctx: RoundContext, u: int) -> bytes:
    """PRG label of client ``u``'s self mask."""
    return b"secagg/v1/mask/self" + ctx.digest + struct.pack(">QI", ctx.round_id, u)


def share_associated_data(ctx: RoundContext, sender: int, recipient: int) -> bytes:
    """AEAD associated data of the share ciphertext from ``sender`` to ``recipient``."""
    return (b"secagg/v1/shares" + ctx.digest
            + struct.pack(">QII", ctx.round_id, sender, recipient))


def advert_payload(ctx: RoundContext, u: int, c_pk: bytes, s_pk: bytes) -> bytes:
    """What client ``u`` signs when it advertises its two public keys (active mode)."""
    return (b"secagg/v1/advertise" + ctx.digest + struct.pack(">QI", ctx.round_id, u)
            + c_pk + s_pk)


def consistency_payload(ctx: RoundContext, survivors: Sequence[int]) -> bytes:
    """What each client signs in the consistency check: the survivor set it was shown."""
    return (b"secagg/v1/consistency" + ctx.digest
            + struct.pack(f">QI{len(survivors)}I", ctx.round_id, len(survivors), *survivors))

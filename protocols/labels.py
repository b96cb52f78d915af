"""Domain separation: every HKDF info, PRG label, AEAD associated data and signed payload.

All of them start with a distinct ASCII tag and bind the round context digest (config, round,
dimension, cohort) plus the parties involved, in a fixed-width big-endian encoding, so no value
made for one purpose, pair or round is ever valid for another.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from secagg import kex
from secagg.protocols.context import RoundContext
from secagg.protocols.epoch import EpochContext

__all__ = [
    "LABEL_VERSION",
    "advert_payload",
    "ckks_input_payload",
    "consistency_payload",
    "kex_info",
    "kex_salt",
    "key_advert_payload",
    "key_delivery_associated_data",
    "key_distribution_payload",
    "key_kex_info",
    "pair_mask_label",
    "self_mask_label",
    "share_associated_data",
]

LABEL_VERSION = 1
PURPOSE_SHARE_KEY = b"share-encryption"
PURPOSE_MASK_SEED = b"pairwise-mask"
PURPOSE_CKKS_KEY = b"ckks-secret-context"


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


def share_associated_data(ctx: RoundContext, sender: int, recipient: int,
                          graph_seed: bytes) -> bytes:
    """AEAD associated data of the share ciphertext from ``sender`` to ``recipient``; the
    graph seed is bound in, so clients shown different commitment lists (different graphs)
    never open each other's shares."""
    return (b"secagg/v2/shares" + ctx.digest + graph_seed
            + struct.pack(">QII", ctx.round_id, sender, recipient))


def advert_payload(ctx: RoundContext, u: int, c_pk: bytes, s_pk: bytes,
                   commitment: bytes) -> bytes:
    """What client ``u`` signs when it advertises its two public keys and its graph-nonce
    commitment (active mode)."""
    return (b"secagg/v2/advertise" + ctx.digest + struct.pack(">QI", ctx.round_id, u)
            + c_pk + s_pk + commitment)


def consistency_payload(ctx: RoundContext, survivors: Sequence[int], graph_seed: bytes) -> bytes:
    """What each client signs in the consistency check: the survivor set it was shown, under
    the graph seed it computed (a signature counts only for clients of the same graph)."""
    return (b"secagg/v2/consistency" + ctx.digest + graph_seed
            + struct.pack(f">QI{len(survivors)}I", ctx.round_id, len(survivors), *survivors))


# -- CKKS key setup (bound to the epoch digest) and CKKS uploads ------------------------------


def key_kex_info(ectx: EpochContext, leader: int, recipient: int) -> bytes:
    """HKDF info of the key under which ``leader`` sends the secret context to ``recipient``:
    protocol, epoch, purpose and the ordered (leader, recipient) pair."""
    return kex.pair_info(
        protocol=ectx.config.protocol.value.encode() + b"/key-setup", version=LABEL_VERSION,
        round_id=ectx.epoch, purpose=PURPOSE_CKKS_KEY + struct.pack(">II", leader, recipient),
        a=leader, b=recipient,
    )


def key_delivery_associated_data(
    ectx: EpochContext, leader: int, recipient: int, fingerprint: bytes
) -> bytes:
    """AEAD associated data of the secret context sent by ``leader`` to ``recipient``."""
    return (b"secagg/v1/ckks/key-delivery" + ectx.digest
            + struct.pack(">QII", ectx.epoch, leader, recipient) + fingerprint)


def key_advert_payload(ectx: EpochContext, u: int, kx_public: bytes) -> bytes:
    """What member ``u`` signs when it advertises its key-setup public key (active mode)."""
    return (b"secagg/v1/ckks/key-advert" + ectx.digest + struct.pack(">QI", ectx.epoch, u)
            + kx_public)


def key_distribution_payload(ectx: EpochContext, leader: int, fingerprint: bytes) -> bytes:
    """What the leader signs (active mode): this epoch's context is the one of ``fingerprint``."""
    return (b"secagg/v1/ckks/key-distribution" + ectx.digest
            + struct.pack(">QI", ectx.epoch, leader) + fingerprint)


def ckks_input_payload(ctx: RoundContext, u: int, chunks: Sequence[bytes]) -> bytes:
    """What client ``u`` signs with its encrypted upload (active mode): round, sender and a
    SHA-256 over the length-prefixed chunks."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(struct.pack(">I", len(c)))
        h.update(c)
    return (b"secagg/v1/ckks/input" + ctx.digest + struct.pack(">QI", ctx.round_id, u)
            + h.digest())

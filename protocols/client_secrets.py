"""Everything secret a SecAgg client holds in one round, and its wipe (:mod:`.client`)."""

from __future__ import annotations

from secagg import kex
from secagg.protocols.encoding import FloatVector

__all__ = ["ClientSecrets"]


class ClientSecrets:
    """Everything secret a client holds; :meth:`wipe` drops it (best effort in Python)."""

    __slots__ = ("c_key", "held", "input", "mask_seeds", "own", "removable", "s_key", "seed",
                 "share_keys")

    def __init__(self) -> None:
        self.c_key: kex.KeyPair | None = None
        self.s_key: kex.KeyPair | None = None
        self.seed = bytearray()
        self.input: tuple[FloatVector, float] | None = None
        # Raw 32-byte keys, not Aead objects: an AES-GCM context holds about 2.3 kB of
        # OpenSSL state, k of them per client from share time to relay time.
        self.share_keys: dict[int, bytes] = {}
        self.mask_seeds: dict[int, bytes] = {}
        self.own: tuple[bytes, bytes] = (b"", b"")
        self.held: dict[int, tuple[bytes, bytes]] = {}
        self.removable: dict[int, bytes] = {}

    def wipe(self) -> None:
        self.seed[:] = bytes(len(self.seed))
        self.seed = bytearray()
        self.c_key = self.s_key = None
        self.input = None
        self.share_keys.clear()
        self.mask_seeds.clear()
        self.held.clear()
        self.removable.clear()
        self.own = (b"", b"")

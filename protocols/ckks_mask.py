"""``"ckks+mask"``: SecAgg+ double masking under CKKS encryption (collusion resistant).

The round is SecAgg+ (:mod:`secagg.protocols.client`, :mod:`secagg.protocols.server`: advertise,
share keys, masked input, consistency in active mode, unmask, on the same public graph and
threshold) with one change in what travels: the masked ring vector ``y_u = encode(x_u) + PRG(b_u) +
sum_v +-PRG(s_uv) mod 2^bits`` is lifted to two's complement and encrypted under the epoch's CKKS
key (:mod:`secagg.protocols.ckks_round`) instead of being sent in the clear. The keyless server adds
the ciphertexts on receipt; the CKKS sum decodes exactly to integers congruent to ``sum y_u`` mod
``2^bits``, and the pairwise masks between survivors cancel there. After ``unmask`` the server
rebuilds the survivors' self-mask seeds and the dropped clients' mask keys exactly as in SecAgg+ and
sends, with the encrypted sum, the *correction* ``c = -(sum_{u in U3} PRG(b_u) + the dropped
clients' pairwise masks still in the sum) mod 2^bits`` (bit-packed, ``bits/8`` bytes per value).
Each client decrypts, reduces mod ``2^bits``, adds ``c`` and decodes: ``sum x_u``. Clients wait in
``await_sum`` after answering the unmask request (their mask secrets are wiped there).

Where the correction happens, and why there. The server holds no CKKS key, so it can either
subtract an encoding of ``c`` homomorphically (a plaintext add under the public context) or
send ``c`` along. We send it:

* ``c`` reveals nothing the server and the clients do not already learn: it is a function of
  the server's own unmasking results, and given the aggregate ``sum x`` it equals
  ``(sum x) - (decrypted sum)`` mod ``2^bits``. On its own it is uniformly random (a sum of
  self masks, each a fresh PRG stream).
* A plaintext add would put ``c`` in the same slots as the sum and push lane sums past the range
  the layout reserves for ``n`` summands (``c`` is one more full-range term per lane), so the
  layout would need a lane bit more, i.e. fewer lanes per slot, for every upload; and it needs
  SEAL's encoder on the server, i.e. more hazardous code, to save ``bits/8`` bytes per value of
  download against the 16-32 bytes per value of the sum itself.

What the masks buy. In ``"ckks"`` any key holder that colludes with the server reads every
upload. Here such a coalition decrypts ``y_u``: even after it also learns ``b_u`` (the server
rebuilds it for every survivor) what remains is ``x_u`` plus the pairwise masks with ``u``'s
honest neighbours, uniformly random mod ``2^bits``: exactly SecAgg+'s guarantee against a
server that corrupts clients (up to the corruption rate the graph was chosen for). The CKKS
layer adds secrecy against everyone without the key (the server alone, eavesdroppers).
"""

from __future__ import annotations

import numpy as np

from secagg.ckks import CkksPublicContext, CkksSecretContext
from secagg.ckks_sum import CkksSum
from secagg.packing import pack
from secagg.protocols.ckks_round import (
    accept_upload,
    check_key,
    check_public,
    encrypt_upload,
    open_sum,
)
from secagg.protocols.client import SecAggClient
from secagg.protocols.config import ProtocolKind
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import Aggregate
from secagg.protocols.errors import LocalProtocolError, RemoteProtocolError
from secagg.protocols.messages import CkksInput, EncryptedSum, Message, UnmaskRequest
from secagg.protocols.server import SecAggServer
from secagg.sign import SigningKey

__all__ = ["CkksMaskClient", "CkksMaskServer"]


class CkksMaskClient(SecAggClient):
    """One client of a ``"ckks+mask"`` round; ``result`` holds the aggregate when DONE."""

    def __init__(
        self, ctx: RoundContext, client_id: int, *, key: CkksSecretContext,
        identity: SigningKey | None = None,
    ) -> None:
        """Create the client with the epoch's secret context ``key``.

        Raises:
            TypeError: ``ctx`` or ``key`` of the wrong type.
            LocalProtocolError: not a client of the round, not a ``"ckks+mask"`` config, a key
                of another context, or (active mode) a missing or wrong identity.
        """
        super().__init__(ctx, client_id, identity=identity)
        if ctx.config.protocol is not ProtocolKind.CKKS_MASK:
            raise LocalProtocolError("CkksMaskClient runs protocol 'ckks+mask' only")
        self._key: CkksSecretContext | None = check_key(ctx, key)
        self._told: tuple[frozenset[int], frozenset[int]] | None = None
        self.result: Aggregate | None = None
        """The decrypted aggregate, once DONE."""

    def _masked_input(self) -> Message:
        assert self._key is not None
        return encrypt_upload(self._ctx, self._key, self._masked_ring(), self._id,
                              self._identity)

    def _dispatch(self, msg: Message) -> list[Message]:
        if isinstance(msg, EncryptedSum):
            self._check_round(msg)
            return self._on_sum(msg)
        return super()._dispatch(msg)

    def _on_unmask(self, msg: UnmaskRequest) -> list[Message]:
        out = super()._on_unmask(msg)
        self._told = (frozenset(msg.survivors), frozenset(msg.dropped))
        self._s.wipe()  # the mask secrets are spent; only the CKKS key waits for the sum
        return out

    def _on_sum(self, msg: EncryptedSum) -> list[Message]:
        """Check the sum covers what the unmask request (and signed set) said, then open it."""
        assert self._key is not None and self._told is not None
        included = frozenset(msg.included)
        survivors, dropped = self._told
        if not survivors <= included or dropped & included:
            raise RemoteProtocolError("encrypted sum contradicts the unmask request")
        if self._signed is not None and included != frozenset(self._signed):
            raise RemoteProtocolError("encrypted sum contradicts the signed survivor set")
        self.result = open_sum(self._ctx, self._key, msg, self._id, masked=True)
        return []

    def _wipe(self) -> None:
        super()._wipe()
        self._key = None


class CkksMaskServer(SecAggServer):
    """The keyless server of a ``"ckks+mask"`` round."""

    def __init__(self, ctx: RoundContext, *, public: CkksPublicContext) -> None:
        """Create the server with the epoch's public (keyless) context.

        Raises:
            TypeError: ``ctx`` or ``public`` of the wrong type.
            LocalProtocolError: not a ``"ckks+mask"`` config, or another context.
        """
        super().__init__(ctx)
        if ctx.config.protocol is not ProtocolKind.CKKS_MASK:
            raise LocalProtocolError("CkksMaskServer runs protocol 'ckks+mask' only")
        layout = ctx.config.ckks_layout
        assert layout is not None
        self._public = check_public(ctx, public)
        self._sum = CkksSum(public, layout, count=ctx.vector_length)
        self.encrypted: EncryptedSum | None = None
        """The encrypted sum (with the mask correction) sent to the clients, once DONE."""

    def _accept(self, sender: int, msg: Message) -> None:
        if isinstance(msg, CkksInput):
            accept_upload(self._ctx, self._sum, sender, msg)
        else:
            super()._accept(sender, msg)

    def _finish(self, u5: frozenset[int]) -> dict[int, Message]:
        """Compute the mask correction (the masks stripped off a zero vector) and send it
        with the encrypted sum to every included client."""
        ctx = self._ctx
        correction = np.zeros(ctx.vector_length, dtype=np.uint32)
        self._unmask_into(correction)
        bits = ctx.config.bits
        self.encrypted = EncryptedSum(ctx.round_id, self._u3, tuple(self._sum.result()),
                                      len(correction), bits, pack(correction, bits))
        self._wipe()
        out: dict[int, Message] = {v: self.encrypted for v in self._u3}
        return out

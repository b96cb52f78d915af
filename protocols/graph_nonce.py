"""One client's part in the commit-reveal of the SecAgg+ graph seed (:mod:`.graph`).

The client draws a fresh nonce when it advertises and sends only its commitment; it reveals the
nonce once the server has fixed the list of commitments; it derives the seed only after every
committer's nonce opened its commitment. Kept apart from :mod:`.client` so the masking client
reads as the paper's steps.
"""

from __future__ import annotations

from secagg import rng
from secagg.protocols.context import RoundContext
from secagg.protocols.errors import RemoteProtocolError, ThresholdError
from secagg.protocols.graph import NONCE_BYTES, commitment, graph_seed
from secagg.protocols.messages import Commitments, Reveal

__all__ = ["GraphNonce"]


class GraphNonce:
    """A fresh graph nonce, its commitment, and the commitment list it is checked against."""

    __slots__ = ("_commitments", "_ctx", "_id", "_nonce")

    def __init__(self, ctx: RoundContext, client_id: int) -> None:
        self._ctx, self._id = ctx, client_id
        self._nonce = rng.random_bytes(NONCE_BYTES)
        self._commitments = {client_id: commitment(ctx, client_id, self._nonce)}

    @property
    def commitment(self) -> bytes:
        """This client's commitment (what its advert carries)."""
        return self._commitments[self._id]

    def commitment_of(self, u: int) -> bytes:
        """The commitment of committer ``u`` in the list this client answered.

        Raises:
            KeyError: ``u`` is not on the list.
        """
        return self._commitments[u]

    def reveal(self, msg: Commitments) -> Reveal:
        """Keep the server's commitment list (it fixes whose nonces make the seed) and reveal.

        Raises:
            RemoteProtocolError: the list omits or alters this client's commitment, or names
                a non-client.
            ThresholdError: fewer than ``t`` committers.
        """
        ctx = self._ctx
        coms = dict(msg.commitments)
        if coms.get(self._id) != self.commitment:
            raise RemoteProtocolError("commitment list omits or alters my commitment")
        if not all(ctx.is_client(u) for u in coms):
            raise RemoteProtocolError("commitment list names non-clients")
        if len(coms) < ctx.config.threshold:
            raise ThresholdError(f"only {len(coms)} clients committed")
        self._commitments = coms
        return Reveal(ctx.round_id, self._id, self._nonce)

    def seed(self, reveals: tuple[tuple[int, bytes], ...]) -> bytes:
        """The graph seed, once every committer's nonce opened its commitment.

        Raises:
            RemoteProtocolError: a committer's nonce is missing, extra, or does not open its
                commitment (``party`` names it).
        """
        ctx, got = self._ctx, dict(reveals)
        if got.keys() != self._commitments.keys():
            raise RemoteProtocolError("reveals do not match the commitment list exactly")
        for u, nonce in got.items():
            if commitment(ctx, u, nonce) != self._commitments[u]:
                raise RemoteProtocolError("revealed nonce does not open its commitment",
                                          party=u)
        return graph_seed(ctx, reveals)

    def wipe(self) -> None:
        """Forget the nonce (secret only until revealed)."""
        self._nonce = b""

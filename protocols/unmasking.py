"""Server side of the unmask step: reconstruct the secrets, strip the masks off the sum.

For each survivor ``u`` the server rebuilds the self-mask seed ``b_u`` from ``t`` seed shares
and subtracts ``PRG(b_u)``; for each client ``u`` that shared keys but sent no masked input it
rebuilds the mask key ``s_u^SK`` (checked against the advertised public key), recomputes
``s_uv`` with every surviving neighbour ``v`` and cancels the ``+-PRG(s_uv)`` that ``v`` added.
Secrets held by one holder set share one :class:`secagg.shamir.Reconstructor`.
"""

from __future__ import annotations

from collections.abc import Mapping

from secagg.errors import InsufficientSharesError
from secagg.protocols.errors import RemoteProtocolError, ThresholdError
from secagg.shamir import Reconstructor

__all__ = ["SecretRecovery"]


class SecretRecovery:
    """Combines shares into secrets, caching Lagrange coefficients per holder set."""

    def __init__(self, threshold: int) -> None:
        """Recover secrets shared with ``threshold``."""
        self._t = threshold
        self._cache: dict[tuple[int, ...], Reconstructor] = {}

    def recover(self, owner: int, shares: Mapping[int, int]) -> bytes:
        """Rebuild ``owner``'s secret from ``shares`` (holder id -> y), first ``t`` holders.

        Raises:
            ThresholdError: fewer than ``t`` shares (``party`` = owner).
            RemoteProtocolError: the shares are inconsistent.
        """
        holders = tuple(sorted(shares)[: self._t])
        if len(holders) < self._t:
            raise ThresholdError(f"{len(holders)} shares of a secret, need {self._t}",
                                 party=owner)
        rec = self._cache.get(holders)
        if rec is None:
            rec = self._cache[holders] = Reconstructor([h + 1 for h in holders],
                                                       threshold=self._t)
        try:
            return rec.combine([shares[h] for h in holders])
        except InsufficientSharesError:
            raise RemoteProtocolError("inconsistent shares of a secret", party=owner) from None


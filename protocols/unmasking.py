"""Server side of the unmask step: reconstruct the secrets, strip the masks off the sum.

For each survivor ``u`` the server rebuilds the self-mask seed ``b_u`` from ``t`` seed shares
and subtracts ``PRG(b_u)``; for each client ``u`` that shared keys but sent no masked input it
rebuilds the mask key ``s_u^SK`` (checked against the advertised public key), recomputes
``s_uv`` with every surviving neighbour ``v`` and cancels the ``+-PRG(s_uv)`` that ``v`` added.
Secrets held by one holder set share one :class:`secagg.shamir.Reconstructor`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from secagg.errors import InsufficientSharesError
from secagg.protocols.context import RoundContext
from secagg.protocols.errors import RemoteProtocolError, ThresholdError
from secagg.protocols.recovery import strip_masks
from secagg.shamir import Reconstructor

__all__ = ["SecretRecovery", "remove_masks"]


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


def remove_masks(
    ctx: RoundContext,
    acc: npt.NDArray[np.uint32],
    *,
    seeds: Mapping[int, bytes],
    mask_keys: Mapping[int, bytes],
    public_keys: Mapping[int, bytes],
    neighbours: Callable[[int], frozenset[int]],
) -> int:
    """Strip the self masks of ``seeds``' owners and the pairwise masks of ``mask_keys``'.

    ``acc`` is the ring sum of the survivors' masked inputs (the keys of ``seeds``); it is
    updated in place and reduced mod ``2^bits``. Returns the keystream words expanded.

    Raises:
        RemoteProtocolError: a reconstructed mask key does not match its public key, or a
            peer key is degenerate.
    """
    return strip_masks(ctx, acc, seeds=seeds, mask_keys=mask_keys, public_keys=public_keys,
                       neighbours=neighbours)

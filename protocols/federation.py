"""Rounds of one CKKS config over a changing membership, with key rotation (simulation).

:class:`CkksFederation` keeps the current key epoch and runs rounds on it
(:func:`secagg.protocols.harness.run_round` with ``keys=``). It starts a new epoch, i.e. a fresh key
setup with a new leader and context (:mod:`secagg.protocols.keysetup`):

* on request (:meth:`CkksFederation.rotate`),
* when the members change (:meth:`CkksFederation.set_members`): a member that left must not
  decrypt later sums, one that joined must not decrypt earlier ones,
* when a round's cohort includes a client that holds no key of the epoch (a new member, or one
  that missed the setup): it joins the members and gets the key like everyone else.

Round ids increase across epochs; every round binds its epoch's context fingerprint, and any
ciphertext of an earlier epoch is refused by fingerprint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy.typing as npt

from secagg.protocols.ckks_harness import CkksKeyring, KeySetupResult, setup_keys
from secagg.protocols.config import SecAggConfig
from secagg.protocols.errors import ConfigError, LocalProtocolError
from secagg.protocols.harness import RoundResult, run_round
from secagg.sign import SigningKey

__all__ = ["CkksFederation"]


class CkksFederation:
    """A CKKS config, its members, the current key epoch, and the rounds run on it."""

    def __init__(
        self,
        config: SecAggConfig,
        members: Iterable[int],
        *,
        identities: Mapping[int, SigningKey] | None = None,
    ) -> None:
        """No key yet: the first round (or :meth:`rotate`) runs the first key setup.

        Raises:
            TypeError: ``config`` is not a SecAggConfig.
            ConfigError: not a CKKS config, or no members.
        """
        if not isinstance(config, SecAggConfig):
            raise TypeError(f"config must be SecAggConfig, got {type(config).__name__}")
        if not config.is_ckks:
            raise ConfigError("CkksFederation needs protocol 'ckks' or 'ckks+mask'")
        self._config = config
        self._members = frozenset(members)
        if not self._members:
            raise ConfigError("a federation needs members")
        self._identities: dict[int, SigningKey] = dict(identities or {})
        self._keys: CkksKeyring | None = None
        self._epoch = -1
        self._round = 0
        self.setups: list[KeySetupResult] = []
        """Every key setup run so far, oldest first."""

    @property
    def members(self) -> frozenset[int]:
        """Who may hold the key."""
        return self._members

    @property
    def keys(self) -> CkksKeyring:
        """The current epoch's keys.

        Raises:
            LocalProtocolError: no epoch yet.
        """
        if self._keys is None:
            raise LocalProtocolError("no key epoch yet")
        return self._keys

    @property
    def epoch(self) -> int:
        """The current epoch (-1 before the first setup)."""
        return self._epoch

    def rotate(self, *, drop: Mapping[str, Iterable[int]] | None = None) -> KeySetupResult:
        """Start a new epoch for the current members: new leader, new context.

        Raises:
            ThresholdError: too few members got the key, or the leader sent none (the epoch
                number is spent either way; rotate again).
        """
        self._epoch += 1
        if self._config.active:
            for u in self._members - self._identities.keys():
                self._identities[u] = SigningKey.generate()
        res = setup_keys(self._config, self._members, epoch=self._epoch,
                         identities=self._identities or None, drop=drop)
        self._keys = res.keys
        self.setups.append(res)
        return res

    def set_members(self, members: Iterable[int]) -> KeySetupResult | None:
        """Change the members; rotates the key if they changed.

        Raises:
            ConfigError: no members.
            ThresholdError: as :meth:`rotate`.
        """
        new = frozenset(members)
        if not new:
            raise ConfigError("a federation needs members")
        if new == self._members and self._keys is not None:
            return None
        self._members = new
        return self.rotate()

    def run_round(
        self,
        inputs: Mapping[int, npt.NDArray[Any]],
        drop: Mapping[str, Iterable[int]] | None = None,
        weights: Mapping[int, float] | None = None,
    ) -> RoundResult:
        """Run the next round on the current epoch; clients without its key make the members
        grow and the key rotate first.

        Raises:
            As :func:`secagg.protocols.harness.run_round` and :meth:`rotate`.
        """
        cohort = frozenset(inputs)
        if self._keys is None or not cohort <= set(self._keys.holders):
            if self.set_members(self._members | cohort) is None:
                self.rotate()  # same members, but some missed the epoch's key
        self._round += 1
        return run_round(self._config, inputs, drop, weights, round_id=self._round,
                         keys=self._keys)

"""Simulated CKKS key setup: every member's key from one in-process session.

:func:`setup_keys` runs a :class:`secagg.protocols.keysetup.KeySetupServer` and its members through
the wire codec (stages ``"advertise"``, ``"distribute"``, ``"confirm"``; ``drop`` as in
:mod:`secagg.protocols.simulation`) and returns a :class:`KeySetupResult` whose :class:`CkksKeyring`
is what :func:`secagg.protocols.harness.run_round` takes as ``keys=`` to run rounds of that epoch. A
keyring holds every member's secret context only because a simulation plays every member;
in a deployment each client keeps its own and the server keeps :class:`EpochKeys`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from secagg.ckks import CkksPublicContext, CkksSecretContext
from secagg.protocols.config import SecAggConfig
from secagg.protocols.epoch import EpochContext
from secagg.protocols.errors import LocalProtocolError, ProtocolError
from secagg.protocols.keysetup import EpochKeys, KeySetupClient, KeySetupServer
from secagg.protocols.simulation import Simulation
from secagg.protocols.transitions import ClientStage
from secagg.sign import SigningKey

__all__ = ["KEY_STAGES", "CkksKeyring", "KeySetupResult", "KeySetupSimulation", "setup_keys"]

KEY_STAGES = ("advertise", "distribute", "confirm")


@dataclass(frozen=True)
class CkksKeyring:
    """One epoch's keys as a simulation holds them: the server's part and every holder's.

    ``identities`` are the members' Ed25519 keys (active mode; rounds of the epoch reuse them).
    """

    epoch: int
    public: CkksPublicContext
    secrets: Mapping[int, CkksSecretContext] = field(repr=False)
    identities: Mapping[int, SigningKey] = field(default_factory=dict, repr=False)

    @property
    def holders(self) -> tuple[int, ...]:
        """The members that hold the key, ascending."""
        return tuple(sorted(self.secrets))

    @property
    def fingerprint(self) -> bytes:
        """The context fingerprint rounds of this epoch bind."""
        return self.public.fingerprint

    def secret(self, cid: int) -> CkksSecretContext:
        """Member ``cid``'s secret context.

        Raises:
            LocalProtocolError: ``cid`` holds no key of this epoch.
        """
        if cid not in self.secrets:
            raise LocalProtocolError(f"{cid} holds no key of epoch {self.epoch}", party=cid)
        return self.secrets[cid]


@dataclass(frozen=True)
class KeySetupResult:
    """Outcome, timings and traffic of one simulated key setup."""

    keys: CkksKeyring
    server_keys: EpochKeys = field(repr=False)
    leader: int
    server_s: float
    client_s: dict[int, float] = field(repr=False)
    bytes_up: dict[int, int] = field(repr=False)
    bytes_down: dict[int, int] = field(repr=False)
    client_errors: dict[int, BaseException] = field(default_factory=dict)
    server_rejections: tuple[ProtocolError, ...] = ()


class KeySetupSimulation(Simulation):
    """One key setup of in-process members and a server."""

    STAGES = KEY_STAGES

    def __init__(
        self,
        config: SecAggConfig,
        members: Iterable[int],
        *,
        epoch: int = 0,
        identities: Mapping[int, SigningKey] | None = None,
        drop: Mapping[str, Iterable[int]] | None = None,
        seed: bytes = b"",
    ) -> None:
        """Build the epoch context and the participants (identities drawn if active and
        not given).

        Raises:
            TypeError, ConfigError: as :class:`EpochContext`.
            LocalProtocolError: ``drop`` names an unknown stage or id, or identities miss a
                member.
        """
        ids = sorted(set(members))
        ident: dict[int, SigningKey] = {}
        if config.active:
            ident = dict(identities) if identities else {i: SigningKey.generate() for i in ids}
            if not set(ids) <= set(ident):
                raise LocalProtocolError("active mode: every member needs an identity")
        self.identities = ident
        vks = {i: ident[i].verify_key for i in ids} if ident else None
        self.ctx = EpochContext(config=config, epoch=epoch, client_ids=ids, seed=seed,
                                verify_keys=vks)
        self._init_accounting(ids, drop)
        self.server: KeySetupServer = KeySetupServer(self.ctx)
        self.clients: dict[int, Any] = {
            # a passive simulation trusts its own in-process relay by construction
            i: KeySetupClient(self.ctx, i, identity=ident.get(i), trust_relay=not config.active)
            for i in ids}

    def run(self) -> KeySetupResult:
        """Drive the setup to the end.

        Raises:
            ThresholdError: too few members, or the leader distributed nothing.
            ProtocolError: the server aborted for another reason.
        """
        self.drive()
        server_keys = self.server.keys
        secrets = {cid: c.secret_context for cid, c in self.clients.items()
                   if c.stage is ClientStage.DONE and cid in server_keys.holders}
        keys = CkksKeyring(self.ctx.epoch, server_keys.public, secrets, self.identities)
        active = [c for c in self.clients if self.bytes_up[c] or self.bytes_down[c]]
        assert self.server.leader is not None
        return KeySetupResult(
            keys=keys, server_keys=server_keys, leader=self.server.leader,
            server_s=self.server_s, client_s={c: self.client_s[c] for c in active},
            bytes_up={c: self.bytes_up[c] for c in active},
            bytes_down={c: self.bytes_down[c] for c in active},
            client_errors=dict(self.client_errors),
            server_rejections=tuple(self.server.rejected))


def setup_keys(
    config: SecAggConfig,
    members: Iterable[int],
    *,
    epoch: int = 0,
    identities: Mapping[int, SigningKey] | None = None,
    drop: Mapping[str, Iterable[int]] | None = None,
) -> KeySetupResult:
    """Run one key setup in process for ``members`` (a CKKS config).

    Raises:
        ThresholdError: fewer than the threshold of members hold the key in the end, or
            the leader distributed none.
        ConfigError, LocalProtocolError, TypeError: bad arguments.
    """
    return KeySetupSimulation(config, members, epoch=epoch, identities=identities,
                              drop=drop).run()

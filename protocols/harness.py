"""In-memory simulation of one round: n clients wired to a server through the wire codec.

``run_round(config, inputs, drop=None, weights=None, keys=None)`` is the researchers' and
benchmarks' entry point, for every protocol. Every message is encoded to bytes and decoded
again on the other side (bytes counted per client, up and down), and every participant call
is timed with ``time.perf_counter`` (codec time included, charged to whoever runs it); see
:mod:`secagg.protocols.simulation`.

``drop`` maps a stage name (``"advertise"``, ``"reveal"``, ``"share"``, ``"masked_input"``,
``"consistency"``, ``"unmask"``) to the ids that fail to send that stage's message; a client
that drops stays gone for the rest of the round. Dropping at ``advertise``/``share`` keeps a
client out of everyone's shares and masks (an absent neighbour in the graph); a client that
advertised and then fails to reveal its graph nonce aborts the round (``ThresholdError``:
the seed needs every committed nonce, see :mod:`secagg.protocols.graph`); at
``masked_input`` its pairwise masks are recovered from key shares; at
``consistency``/``unmask`` its input is still counted, it just stops answering. The plaintext
baseline has one stage (``masked_input``): any drop up to it leaves the client out.

CKKS. ``"ckks+mask"`` uses the same five stages with the same meaning (the masked input is
encrypted). ``"ckks"`` has one server stage, ``masked_input`` (the encrypted upload): a drop
at any stage up to it leaves the client out of the sum; a drop at ``consistency``/``unmask``
means it uploads but is gone when the sum comes back. In both, the server holds no key: the
aggregate of the :class:`RoundResult` is what the clients decrypted (they must all agree).
Keys come from ``keys=`` (a :class:`secagg.protocols.ckks_harness.CkksKeyring`, reused across the
rounds of an epoch) or, if left out, from a key setup of the round's clients run first
(``result.key_setup``; its cost is not in the round's timings). ``result.keys`` is the keyring
either way; :class:`secagg.protocols.federation.CkksFederation` rotates it on membership changes.

Mask accounting for benchmarks: ``client_mask_words + server_mask_words`` is the number of
uint32 keystream words the round expanded, i.e. what a raw AES-CTR bound must generate.

:class:`RoundSimulation` exposes two hooks, :meth:`~RoundSimulation.to_client` and
:meth:`~RoundSimulation.to_server`, that tests override to tamper with bytes in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from secagg.protocols.client import SecAggClient
from secagg.protocols.config import ProtocolKind, SecAggConfig
from secagg.protocols.context import RoundContext
from secagg.protocols.encoding import Aggregate, check_input
from secagg.protocols.errors import (
    InputError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ThresholdError,
)
from secagg.protocols.participant import ClientBase, ServerBase
from secagg.protocols.plaintext import PlainClient, PlainServer
from secagg.protocols.server import SecAggServer
from secagg.protocols.simulation import Simulation
from secagg.protocols.transitions import ClientStage
from secagg.sign import SigningKey, VerifyKey

if TYPE_CHECKING:  # CKKS is an extra (TenSEAL): imported where a CKKS round needs it
    from secagg.ckks import CkksPublicContext, CkksSecretContext
    from secagg.protocols.ckks_harness import CkksKeyring, KeySetupResult

__all__ = ["STAGES", "RoundResult", "RoundSimulation", "create_client", "create_server",
           "run_round"]

STAGES = ("advertise", "reveal", "share", "masked_input", "consistency", "unmask")


def create_server(
    ctx: RoundContext, *, public: CkksPublicContext | None = None
) -> ServerBase[RoundContext]:
    """The server participant for ``ctx.config.protocol`` (CKKS: with the public context).

    Raises:
        LocalProtocolError: as the participant constructors (CKKS without ``public``).
    """
    kind = ctx.config.protocol
    if kind.is_ckks:
        from secagg.protocols.ckks_mask import CkksMaskServer
        from secagg.protocols.ckks_round import CkksServer

        if public is None:
            raise LocalProtocolError("a CKKS server needs the epoch's public context")
        if kind is ProtocolKind.CKKS:
            return CkksServer(ctx, public=public)
        return CkksMaskServer(ctx, public=public)
    return SecAggServer(ctx) if ctx.config.is_secure else PlainServer(ctx)


def create_client(
    ctx: RoundContext, client_id: int, *, identity: SigningKey | None = None,
    key: CkksSecretContext | None = None,
) -> ClientBase[RoundContext]:
    """The client participant for ``ctx.config.protocol`` (CKKS: with the secret context).

    Raises:
        LocalProtocolError: as the participant constructors (CKKS without ``key``).
    """
    kind = ctx.config.protocol
    if kind.is_ckks:
        from secagg.protocols.ckks_mask import CkksMaskClient
        from secagg.protocols.ckks_round import CkksClient

        if key is None:
            raise LocalProtocolError("a CKKS client needs the epoch's secret context")
        if kind is ProtocolKind.CKKS:
            return CkksClient(ctx, client_id, key=key, identity=identity)
        return CkksMaskClient(ctx, client_id, key=key, identity=identity)
    if ctx.config.is_secure:
        return SecAggClient(ctx, client_id, identity=identity)
    return PlainClient(ctx, client_id)


@dataclass(frozen=True)
class RoundResult:
    """Outcome, timings and traffic of one simulated round.

    ``aggregate`` is the float sum over ``included`` (weighted mode: ``sum w x``, and
    ``weight_total = sum w``); timings are seconds of compute per role; bytes are wire bytes.
    """

    config: SecAggConfig
    output: Aggregate = field(repr=False)
    server_s: float
    client_s: dict[int, float] = field(repr=False)
    bytes_up: dict[int, int] = field(repr=False)
    bytes_down: dict[int, int] = field(repr=False)
    client_mask_words: int
    server_mask_words: int
    client_errors: dict[int, BaseException] = field(default_factory=dict)
    server_rejections: tuple[ProtocolError, ...] = ()
    keys: CkksKeyring | None = field(default=None, repr=False)
    """CKKS: the epoch's keys (pass them to the next round)."""
    key_setup: KeySetupResult | None = field(default=None, repr=False)
    """CKKS: the key setup run for this round, if ``keys`` was not given."""
    released_noise: dict[int, dict[int, bytes]] = field(default_factory=dict, repr=False)
    """SecAgg/SecAgg+: the removable noise seeds the survivors released."""

    @property
    def aggregate(self) -> npt.NDArray[np.float64]:
        """The decoded sum of the included inputs."""
        return self.output.values

    @property
    def included(self) -> tuple[int, ...]:
        """Ids whose masked input was counted."""
        return self.output.included

    @property
    def weight_total(self) -> float:
        """Total weight of the included clients (their number when unweighted)."""
        return self.output.weight_total

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        """The (weighted) mean update."""
        return self.output.mean

    @property
    def client_s_mean(self) -> float:
        """Mean compute seconds per participating client."""
        return float(np.mean(list(self.client_s.values()))) if self.client_s else 0.0

    @property
    def client_s_max(self) -> float:
        """Slowest client's compute seconds."""
        return max(self.client_s.values(), default=0.0)

    @property
    def total_compute_s(self) -> float:
        """Server plus all clients."""
        return self.server_s + sum(self.client_s.values())

    @property
    def bytes_up_per_client(self) -> float:
        """Mean bytes sent per participating client."""
        return float(np.mean(list(self.bytes_up.values()))) if self.bytes_up else 0.0

    @property
    def bytes_down_per_client(self) -> float:
        """Mean bytes received per participating client."""
        return float(np.mean(list(self.bytes_down.values()))) if self.bytes_down else 0.0


def _probe_keys(ids: list[int]) -> dict[int, VerifyKey]:
    vk = SigningKey.from_private_bytes(bytes(32)).verify_key  # public placeholder, never used
    return dict.fromkeys(ids, vk)


class RoundSimulation(Simulation):
    """One round of n in-process clients and a server, driven stage by stage."""

    STAGES = STAGES

    def __init__(
        self,
        config: SecAggConfig,
        inputs: Mapping[int, npt.NDArray[Any]],
        *,
        drop: Mapping[str, Iterable[int]] | None = None,
        weights: Mapping[int, float] | None = None,
        round_id: int = 1,
        keys: CkksKeyring | None = None,
        removable: Mapping[int, dict[int, bytes]] | None = None,
    ) -> None:
        """Build the context and participants; validate inputs before any crypto (CKKS
        without ``keys``: a key setup of the round's clients runs first). ``removable``:
        SecAgg/SecAgg+, each client's removable noise seeds
        (:meth:`secagg.protocols.client.SecAggClient.hold_removable`).

        Raises:
            TypeError: an input is not a float numpy array.
            InputError: inputs of unequal length, NaN/inf, beyond the clip range, a bad
                weight (``party`` names the client).
            ConfigError: ``len(inputs) != config.n`` and similar.
            LocalProtocolError: ``drop`` names an unknown stage or id; ``keys`` given for a
                non-CKKS config, or a client holds no key of the epoch.
            ThresholdError: the key setup run for the round failed.
        """
        ids = sorted(inputs)
        if not ids:
            raise InputError("no inputs")
        dim = int(np.shape(inputs[ids[0]])[0]) if np.ndim(inputs[ids[0]]) == 1 else 0
        self._init_accounting(ids, drop)
        self._inputs = dict(inputs)
        self._weights = dict(weights) if weights is not None else {}
        # Inputs are checked before any crypto (a key setup included): against a context
        # that differs from the round's only in the (public) key fingerprint.
        probe = RoundContext(config=config, round_id=round_id, dim=max(dim, 1), client_ids=ids,
                             verify_keys=None if not config.active else _probe_keys(ids),
                             ckks_fingerprint=bytes(32) if config.is_ckks else None)
        for i in ids:
            try:
                check_input(probe, inputs[i], self._weights.get(i))
            except InputError as exc:
                raise InputError(str(exc), party=i) from exc
        self.key_setup: KeySetupResult | None = None
        self.keys = self._keys(config, ids, keys)
        identities: Mapping[int, SigningKey] = {}
        if config.active:
            identities = self.keys.identities if self.keys else {
                i: SigningKey.generate() for i in ids}
        self.ctx = RoundContext(
            config=config, round_id=round_id, dim=max(dim, 1), client_ids=ids,
            verify_keys={i: identities[i].verify_key for i in ids} if identities else None,
            ckks_fingerprint=self.keys.fingerprint if self.keys else None)
        public = self.keys.public if self.keys else None
        self.server = create_server(self.ctx, public=public)
        self.clients = {i: create_client(self.ctx, i, identity=identities.get(i),
                                         key=self.keys.secret(i) if self.keys else None)
                        for i in ids}
        for i, seeds in (removable or {}).items():
            client = self.clients.get(i)
            if not isinstance(client, SecAggClient):
                raise LocalProtocolError(f"removable noise needs a SecAgg client, not {i!r}")
            client.hold_removable(seeds)

    def _keys(self, config: SecAggConfig, ids: list[int], keys: CkksKeyring | None,
              ) -> CkksKeyring | None:
        if not config.is_ckks:
            if keys is not None:
                raise LocalProtocolError(f"{config.protocol.value} takes no CKKS keys")
            return None
        from secagg.protocols.ckks_harness import CkksKeyring, setup_keys

        if keys is None:
            self.key_setup = setup_keys(config, ids)
            keys = self.key_setup.keys
        if not isinstance(keys, CkksKeyring):
            raise TypeError(f"keys must be CkksKeyring, got {type(keys).__name__}")
        missing = sorted(set(ids) - set(keys.holders))
        if missing:
            raise LocalProtocolError(f"clients {missing[:8]} hold no key of epoch "
                                     f"{keys.epoch}: start a new epoch")
        return keys

    def _start_args(self, cid: int) -> tuple[Any, float | None]:
        return self._inputs[cid], self._weights.get(cid)

    def run(self) -> RoundResult:
        """Drive the round to the end.

        Raises:
            ThresholdError: fewer than the threshold remain (round aborted); CKKS: no client
                was left to decrypt the sum.
            ProtocolError: the server aborted for another reason; CKKS: clients decrypted
                different sums.
        """
        self.drive()
        return self._result()

    def _output(self) -> Aggregate:
        if not self.ctx.config.is_ckks:
            return self.server.result
        from secagg.protocols.ckks_mask import CkksMaskClient
        from secagg.protocols.ckks_round import CkksClient

        outs: list[Aggregate] = [
            c.result for c in self.clients.values()
            if isinstance(c, (CkksClient, CkksMaskClient)) and c.stage is ClientStage.DONE
            and c.result is not None]
        if not outs:
            raise ThresholdError("no client was left to decrypt the encrypted sum")
        first = outs[0]
        for o in outs[1:]:
            if o.included != first.included or not np.array_equal(o.ring, first.ring):
                raise RemoteProtocolError("clients decrypted different sums")
        return first

    def _result(self) -> RoundResult:
        active = [c for c in self.clients if self.bytes_up[c] or self.bytes_down[c]]
        return RoundResult(
            config=self.ctx.config, output=self._output(), server_s=self.server_s,
            client_s={c: self.client_s[c] for c in active},
            bytes_up={c: self.bytes_up[c] for c in active},
            bytes_down={c: self.bytes_down[c] for c in active},
            client_mask_words=sum(c.mask_words for c in self.clients.values()),
            server_mask_words=self.server.mask_words, client_errors=dict(self.client_errors),
            server_rejections=tuple(self.server.rejected), keys=self.keys,
            key_setup=self.key_setup,
            released_noise=getattr(self.server, "released_noise", {}))


def run_round(
    config: SecAggConfig,
    inputs: Mapping[int, npt.NDArray[Any]],
    drop: Mapping[str, Iterable[int]] | None = None,
    weights: Mapping[int, float] | None = None,
    *,
    round_id: int = 1,
    keys: CkksKeyring | None = None,
    removable: Mapping[int, dict[int, bytes]] | None = None,
) -> RoundResult:
    """Run one round in process and return its aggregate, timings and traffic.

    ``removable``: each client's removable noise seeds (SecAgg/SecAgg+); the seeds the
    survivors released are in ``result.released_noise``.

    ``keys``: CKKS only, the epoch's keyring (``result.keys`` of an earlier round, or
    :func:`secagg.protocols.ckks_harness.setup_keys`); left out, a key setup runs first.

    Raises:
        ThresholdError: fewer than the threshold remain at some stage.
        InputError, ConfigError, LocalProtocolError, TypeError: bad arguments (before any
            crypto runs).
        ProtocolError: the round aborted for another protocol reason.
    """
    return RoundSimulation(config, inputs, drop=drop, weights=weights, round_id=round_id,
                           keys=keys, removable=removable).run()

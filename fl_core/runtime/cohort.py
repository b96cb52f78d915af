"""Who takes part in a round: liveness of connected clients, the cohort draw, and the round's
config when the cohort is smaller than the configured ``n``.

Liveness. The transport remembers a route for every client it has heard from and forgets it
only when a send to it fails; libzmq, underneath, drops a peer's pipe as soon as its
connection closes (a SIGKILLed process: at once, the kernel closes its sockets) or its ZMTP
heartbeats stop (``SocketOptions.heartbeat_timeout_ms``, a host that vanished). So before a
draw, and every ``probe_interval_s`` while waiting for a cohort, :class:`CohortSampler` sends
each remembered client a tiny ``ping`` control message (clients ignore control types they do
not know); with ``ROUTER_MANDATORY`` a route libzmq has dropped fails at once and the transport
forgets it. Last-heard times alone would be wrong here: a cohort member that is training or
waiting for the next stage sends no hello, yet is alive.

Refill. With ``min_clients`` set, a round that cannot get ``n`` live clients takes all of
them when there are at least ``min_clients``, once no new client has connected for
``refill_wait_s`` (a round after a permanent death thus starts at once instead of waiting for
the dead, while a client that is reconnecting still gets in). The first draw of a server
process waits for the full ``n`` up to ``join_timeout_s`` instead: clients started together
can be seconds apart on a loaded machine, and the first cohort should have them all. The round's
:class:`secagg.protocols.config.SecAggConfig` is then rebuilt from the same arguments with ``n``
replaced (:func:`round_config_args`), which re-derives ``k`` and the threshold by the Bell et
al. rule or re-validates an explicit threshold.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from secagg.fl_core.errors import PeerUnreachable, TransportError
from secagg.fl_core.runtime.rounds import CONTROL, control_message
from secagg.fl_core.transport.sockets import ServerTransport
from secagg.protocols.config import SecAggConfig

__all__ = ["CohortSampler", "population_args", "round_config_args"]

log = logging.getLogger("secagg.fl_core.runtime.cohort")


def round_config_args(base_args: Mapping[str, Any], base: SecAggConfig,
                      n: int) -> dict[str, Any]:
    """The config arguments of a round of ``n`` clients: ``base_args`` with ``n`` replaced.

    CKKS: the key of an epoch belongs to the preset of the full config, so the preset is
    pinned to it (a smaller ``n`` could otherwise pick a cheaper one the key does not fit).
    Validation happens when the caller builds the :class:`SecAggConfig`.
    """
    args = dict(base_args)
    args["n"] = n
    if base.is_ckks and base.ckks_layout is not None and args.get("ckks_preset") is None:
        args["ckks_preset"] = base.ckks_layout.preset.name
    return args


def population_args(args: Mapping[str, Any], cards: int) -> dict[str, Any]:
    """``args`` with ``population = cards`` when a masked protocol in active mode draws its
    cohorts of ``n`` out of more allowlisted clients (the client cards of the party's own key
    folder): the server may place every one of its sybils in one cohort, so ``k`` and ``t``
    are sized for the population's corruption (docs/threat-model.md, "Cohort choice"). Each
    party counts its own cards; a difference is a config mismatch the client refuses."""
    out = dict(args)
    if (out.get("protocol") in ("secagg", "secagg+", "ckks+mask") and out.get("active")
            and cards > int(out["n"])):
        out["population"] = cards
    return out


class CohortSampler:
    """Draws each round's cohort from the live, eligible clients of a transport."""

    def __init__(self, transport: ServerTransport, *, eligible: frozenset[int] | None,
                 n: int, min_clients: int | None, join_timeout_s: float,
                 refill_wait_s: float, probe_interval_s: float = 0.5) -> None:
        """Raises:
            ValueError: ``min_clients`` outside ``[1, n]``.
        """
        if min_clients is not None and not 1 <= min_clients <= n:
            raise ValueError(f"min_clients must be in [1, n={n}], got {min_clients}")
        self.transport = transport
        self.eligible = eligible
        self.n = n
        self.floor = n if min_clients is None else min_clients
        self.join_timeout_s = join_timeout_s
        self.refill_wait_s = refill_wait_s
        self.probe_interval_s = probe_interval_s
        self._rng = random.SystemRandom()  # a CSPRNG: nobody can predict or steer a cohort
        self.round_id = 0  # the round id the pings carry (the last one started)
        self._seen: frozenset[int] = frozenset()
        self._last_join = time.monotonic()
        self._drawn = False

    def available(self) -> list[int]:
        """Connected (routable as far as the transport knows), eligible client ids."""
        ids = self.transport.clients
        if self.eligible is not None:
            ids = ids & self.eligible
        if ids - self._seen:
            self._last_join = time.monotonic()
        self._seen = ids
        return sorted(ids)

    def probe(self) -> list[int]:
        """Ping every known client; forget the ones libzmq has no connection to. Returns
        the ones that remain."""
        ping = control_message("ping")
        for cid in self.available():
            try:
                self.transport.send(cid, self.round_id, CONTROL, ping)
            except PeerUnreachable:
                log.info("client %d is gone (no connection): not available", cid)
            except TransportError as exc:  # a full queue: alive but slow; keep it
                log.info("ping to client %d not sent: %s", cid, exc)
        return self.available()

    def wait(self, want: int, timeout_s: float, *, quiet_s: float | None = None) -> list[int]:
        """Serve hellos and probe until ``want`` clients are live or ``timeout_s`` passes;
        with ``quiet_s``, also stop once at least ``self.floor`` are live and no new client
        has connected for ``quiet_s``."""
        deadline = time.monotonic() + timeout_s
        next_probe = 0.0
        while True:
            now = time.monotonic()
            if now >= next_probe:
                avail = self.probe()
                next_probe = now + self.probe_interval_s
            else:
                avail = self.available()
            if len(avail) >= want or now >= deadline:
                return avail
            wake = min(deadline, next_probe)
            if quiet_s is not None and len(avail) >= self.floor:
                settled = self._last_join + quiet_s
                if now >= settled:
                    return avail
                wake = min(wake, settled)
            self.transport.recv(max(1, int((wake - now) * 1000)), stage=CONTROL)

    def sample(self) -> tuple[int, ...] | None:
        """Up to ``n`` live clients drawn with the CSPRNG, or None if fewer than the floor
        (``min_clients``, else ``n``) are there within ``join_timeout_s``."""
        quiet = self.refill_wait_s if self.floor < self.n and self._drawn else None
        avail = self.wait(self.n, self.join_timeout_s, quiet_s=quiet)
        if len(avail) < self.floor:
            return None
        self._drawn = True
        return tuple(sorted(self._rng.sample(avail, min(self.n, len(avail)))))

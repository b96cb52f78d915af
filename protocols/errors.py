"""Protocol errors: who is at fault, and which party.

Every error a participant raises on purpose derives from :class:`ProtocolError`, itself a
:class:`secagg.errors.SecAggError`:

- :class:`LocalProtocolError`: the caller misused the API (wrong stage, bad input, a config
  that cannot be secure). :class:`InputError` and :class:`ConfigError` are also ``ValueError``.
- :class:`RemoteProtocolError`: a peer sent something illegal (malformed bytes, wrong round or
  stage, a ciphertext or signature that does not verify, a request the security invariants
  forbid).
- :class:`ThresholdError`: fewer than ``t`` parties remain for some secret, so the round
  cannot complete (no one is necessarily at fault).

``party`` names the offending (or, for a threshold error, the unrecoverable) client id where
it is known, else ``None``.
"""

from __future__ import annotations

from secagg.errors import SecAggError

__all__ = [
    "ConfigError",
    "InputError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "ThresholdError",
]


class ProtocolError(SecAggError):
    """Base class of the protocol layer's errors; ``party`` is the id at fault, if known."""

    def __init__(self, message: str, *, party: int | None = None) -> None:
        super().__init__(message if party is None else f"{message} (party {party})")
        self.party = party


class LocalProtocolError(ProtocolError):
    """The local caller broke the API contract (wrong stage, bad arguments)."""


class InputError(LocalProtocolError, ValueError):
    """A client's input vector or weight is unusable (wrong length, NaN, out of range)."""


class ConfigError(LocalProtocolError, ValueError):
    """A configuration is inconsistent or cannot meet its security or range requirements."""


class RemoteProtocolError(ProtocolError):
    """A peer sent bytes or a message the protocol does not allow at this point."""


class ThresholdError(ProtocolError):
    """Fewer than the threshold of parties remain for a secret: the round cannot complete."""

"""Typed errors of the runtime layer (transport, key files), all under :class:`SecAggError`.

Errors that are also an I/O or value condition derive from the matching builtin as well
(``FileExistsError``, ``PermissionError``, ``TimeoutError``, ``ValueError``), so ordinary
handlers keep working.
"""

from __future__ import annotations

from secagg.errors import SecAggError

__all__ = [
    "AuthenticationRejected",
    "EnvelopeError",
    "FlCoreError",
    "HandshakeFailed",
    "InsecureKeyFile",
    "KeyBindingError",
    "KeyFileError",
    "KeyFileExists",
    "PeerUnreachable",
    "PolicyRequired",
    "TransportClosed",
    "TransportError",
    "TransportTimeout",
]


class FlCoreError(SecAggError):
    """Base class of every error raised on purpose by ``fl_core``."""


# -- key files and identities -------------------------------------------------------------


class KeyFileError(FlCoreError, ValueError):
    """A key file is missing a field, has the wrong kind or version, or holds a bad key."""


class KeyFileExists(KeyFileError, FileExistsError):
    """Refused to overwrite an existing key file (pass ``force=True`` to replace it)."""


class InsecureKeyFile(KeyFileError, PermissionError):
    """A key file has unsafe permissions or owner (a secret readable by others, a public key
    or allowlist entry writable by others)."""


class KeyBindingError(FlCoreError, ValueError):
    """A client's Ed25519 identity key and its Curve key are not bound to each other (the
    binding signature does not verify, or a secret does not match its public half)."""


# -- transport ----------------------------------------------------------------------------


class TransportError(FlCoreError):
    """Base class of transport failures."""


class EnvelopeError(TransportError, ValueError):
    """Bytes from a peer are not a well-formed envelope (wrong frame count, bad magic or
    version, truncated or over-long header, declared length not matching the payload)."""


class HandshakeFailed(TransportError):
    """The ZeroMQ security handshake with the server failed (for example a NULL client
    talking to a CurveZMQ server, or the wrong server key)."""


class AuthenticationRejected(HandshakeFailed):
    """The server's ZAP authenticator rejected this client's Curve key (not allowlisted)."""


class TransportTimeout(TransportError, TimeoutError):
    """A bounded wait (connect, send) ran out of time."""


class PeerUnreachable(TransportError, LookupError):
    """The server has no live connection for that client id (never heard from it, or it
    disconnected)."""


class TransportClosed(TransportError):
    """The transport was used after :meth:`close`."""


# -- the client's policy -------------------------------------------------------------------


class PolicyRequired(FlCoreError, ValueError):
    """A client session was started without a
    :class:`secagg.fl_core.runtime.policy.ClientPolicy` and without
    ``insecure=True``: it would run whatever the server's round start says (a ``plain`` start
    gets the update in the clear), so it refuses before connecting or sending anything."""

    @classmethod
    def for_client(cls, client_id: int) -> PolicyRequired:
        """The error for ``client_id``, saying what to do."""
        return cls(f"client {client_id}: no policy. Without the client's own policy the server "
                   "would choose the protocol, mode and parameters (a round start saying "
                   "'plain' gets the update in the clear). Pass policy=ClientPolicy."
                   "from_key_folder(config_args, dim=..., keys=KEY_FOLDER) (docs/api.md), or "
                   "insecure=True to trust the server (tests only)")

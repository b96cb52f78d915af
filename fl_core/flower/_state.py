"""What the Flower carrier needs besides the protocol: record keys, framing, client state.

Flower runs a ``ClientApp`` per message, possibly in another worker process (the Ray backend
keeps a pool of actors), so a client's participant cannot live in a Python variable between
stages: like Flower's own ``secaggplus_mod`` (which keeps its private keys as bytes in
``Context.state``), we keep it in the node's ``Context.state`` as bytes. Pickle is fine here:
the bytes never leave the client's node and are read back only by that node. Key objects are
written through their own ``private_bytes`` / ``serialize_secret`` (they do not pickle).
"""

from __future__ import annotations

import copyreg
import io
import json
import pickle
import struct
from collections.abc import Callable
from typing import Any, Final

from secagg import kex
from secagg.aead import Aead
from secagg.ckks import CkksPublicContext, CkksSecretContext
from secagg.kex import KeyPair
from secagg.protocols import labels
from secagg.protocols.client import SecAggClient
from secagg.protocols.config import SecAggConfig
from secagg.protocols.errors import RemoteProtocolError
from secagg.sign import SigningKey, VerifyKey

__all__ = [
    "CONFIG_FIELDS", "RECORD", "STATE", "config_from_json", "config_to_json", "dumps_state",
    "join_frames", "loads_state", "split_frames",
]

RECORD: Final = "secagg"
"""Name of the ConfigRecord that carries our protocol in both directions."""
STATE: Final = "secagg.state"
"""Name of the ConfigRecord in the client's ``Context.state``."""

CONFIG_FIELDS: Final = ("protocol", "n", "threshold", "k", "bits", "scale", "clip", "active",
                        "weighted", "max_weight", "dropout_rate", "corruption_rate", "sigma",
                        "eta", "ckks_seeded")
_LEN: Final = struct.Struct(">I")


def config_to_json(cfg: SecAggConfig) -> str:
    """The config's constructor arguments as JSON (both sides derive the rest alike)."""
    args: dict[str, Any] = {f: getattr(cfg, f) for f in CONFIG_FIELDS}
    args["protocol"] = cfg.protocol.value
    if cfg.ckks_layout is not None:
        args["ckks_preset"] = cfg.ckks_layout.preset.name
    return json.dumps(args, sort_keys=True)


def config_from_json(text: str) -> SecAggConfig:
    """Rebuild a config sent by :func:`config_to_json`.

    Raises:
        RemoteProtocolError: not a JSON object of config arguments, or an invalid config.
    """
    try:
        args = json.loads(text)
        if not isinstance(args, dict):
            raise TypeError("config must be a JSON object")
        return SecAggConfig(**args)
    except (ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"bad config from the server: {exc}") from None


def join_frames(frames: list[bytes]) -> bytes:
    """Length-prefixed concatenation (a reply may hold zero or more wire messages)."""
    return b"".join(_LEN.pack(len(f)) + f for f in frames)


def split_frames(data: bytes) -> list[bytes]:
    """Inverse of :func:`join_frames`.

    Raises:
        RemoteProtocolError: a frame runs past the end.
    """
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _LEN.size:
            raise RemoteProtocolError("truncated frame header")
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if n > len(data) - pos:
            raise RemoteProtocolError("frame longer than the message")
        out.append(data[pos:pos + n])
        pos += n
    return out


class _AeadStub:
    """Stands in for a pairwise ``Aead`` (whose key cannot be read back) until re-derived."""


_REDUCERS: dict[type, Callable[[Any], tuple[Any, tuple[Any, ...]]]] = {
    KeyPair: lambda k: (KeyPair.from_private_bytes, (k.private_bytes(),)),
    SigningKey: lambda k: (SigningKey.from_private_bytes, (k.private_bytes(),)),
    VerifyKey: lambda k: (VerifyKey.from_bytes, (k.to_bytes(),)),  # active-mode contexts
    CkksSecretContext: lambda c: (CkksSecretContext.from_bytes, (c.serialize_secret(),)),
    CkksPublicContext: lambda c: (CkksPublicContext.from_bytes, (c.to_bytes(),)),
    Aead: lambda _: (_AeadStub, ()),
}


def _rederive_share_keys(client: SecAggClient) -> None:
    """Rebuild pairwise share-encryption ``Aead`` objects exactly as ``SecAggClient`` derived
    them (X25519 of its ``c`` key and the peer's advertised one, same salt and info labels).
    Only for a client that holds ``Aead`` objects (older layouts); one that keeps raw share
    keys pickles as is."""
    s = client._s
    aeads: dict[int, Any] = getattr(s, "aeads", None) or {}
    stale = [v for v, a in aeads.items() if isinstance(a, _AeadStub)]
    if not stale:
        return
    ctx = client._ctx
    if s.c_key is None:
        raise RemoteProtocolError("client state lost its key")
    peers = getattr(client, "_peers", {})
    salt = labels.kex_salt(ctx)
    for v in stale:
        key = kex.agree(s.c_key, peers[v][0], salt=salt, info=labels.kex_info(
            ctx, labels.PURPOSE_SHARE_KEY, client.client_id, v))
        aeads[v] = Aead(key)


def dumps_state(obj: object) -> bytes:
    """Serialise a participant (keys through their own byte forms) for ``Context.state``."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    p.dispatch_table = copyreg.dispatch_table.copy()
    p.dispatch_table.update(_REDUCERS)
    p.dump(obj)
    return buf.getvalue()


def loads_state(data: bytes) -> Any:
    """Inverse of :func:`dumps_state`; only for bytes this node wrote itself."""
    obj = pickle.loads(data)  # noqa: S301 -- the node's own Context.state, never peer bytes
    if isinstance(obj, SecAggClient):
        _rederive_share_keys(obj)
    return obj

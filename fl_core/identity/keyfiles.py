"""Key files: small JSON documents with safe permissions, written all or nothing.

Files are written atomically (temporary file, ``fsync``, link into place) with mode 0600 for
secrets and 0644 for public halves, never overwriting an existing file unless forced. Loading
refuses secrets readable by anyone but their owner and public files writable by others (an
allowlist others can write to is no allowlist), recomputes every public half from its secret,
and verifies each client's identity binding.

Layout of a key folder: ``server.public.json`` / ``server.secret.json`` and
``client-<id>.public.json`` / ``client-<id>.secret.json``. The server's allowlist is a folder of
client public files (:func:`load_allowlist`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from secagg.fl_core.errors import InsecureKeyFile, KeyBindingError, KeyFileError, KeyFileExists
from secagg.fl_core.identity.keys import (
    Allowlist,
    ClientCard,
    ClientKeys,
    CurveKeyPair,
    check_client_id,
    check_curve_key,
)
from secagg.sign import SigningKey, VerifyKey

__all__ = [
    "KEYFILE_VERSION",
    "client_paths",
    "load_allowlist",
    "load_client_card",
    "load_client_keys",
    "load_server_keys",
    "load_server_public",
    "server_paths",
    "write_client_keys",
    "write_server_keys",
]

KEYFILE_VERSION: Final = 1
_MAX_KEYFILE_BYTES: Final = 64 * 1024
_CLIENT_PUBLIC_RE: Final = re.compile(r"^client-(\d+)\.public\.json$")


def server_paths(folder: str | Path) -> tuple[Path, Path]:
    """``(public, secret)`` key file paths of the server in ``folder``."""
    f = Path(folder)
    return f / "server.public.json", f / "server.secret.json"


def client_paths(folder: str | Path, client_id: int) -> tuple[Path, Path]:
    """``(public, secret)`` key file paths of client ``client_id`` in ``folder``."""
    f = Path(folder)
    cid = check_client_id(client_id)
    return f / f"client-{cid}.public.json", f / f"client-{cid}.secret.json"


def _write_atomic(path: Path, doc: Mapping[str, Any], mode: int, force: bool) -> None:
    """Write ``doc`` as JSON to ``path`` with exactly ``mode``, all or nothing.

    Raises:
        KeyFileExists: ``path`` exists and ``force`` is false.
        OSError: the folder is not writable, the disk is full, ...
    """
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes it 0600 already; set exactly, whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and refuses to replace: no check-then-write race
            except FileExistsError:
                raise KeyFileExists(f"{path} exists (use force to overwrite)") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write_pair(
    public: tuple[Path, Mapping[str, Any]], secret: tuple[Path, Mapping[str, Any]], force: bool
) -> None:
    for p in (public[0], secret[0]):
        if not force and os.path.lexists(p):
            raise KeyFileExists(f"{p} exists (use force to overwrite)")
    public[0].parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomic(secret[0], secret[1], 0o600, force)
    _write_atomic(public[0], public[1], 0o644, force)


def _read_doc(path: str | Path, kind: str, *, secret: bool) -> dict[str, Any]:
    """Read a key file after checking its permissions, kind and version.

    Raises:
        FileNotFoundError: no such file.
        InsecureKeyFile: a secret readable or writable by group/others or owned by someone
            else; a public file writable by group/others; a symbolic link or not a
            regular file.
        KeyFileError: too large, not JSON, wrong kind or version.
    """
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang us (no effect on regular files).
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise InsecureKeyFile(f"{path} is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())  # of the file we opened, not of whatever the path is now
        if not stat.S_ISREG(st.st_mode):
            raise InsecureKeyFile(f"{path} is not a regular file")
        perms = stat.S_IMODE(st.st_mode)
        if secret and perms & 0o077:
            raise InsecureKeyFile(f"{path} has mode {perms:04o}; a secret key needs 0600")
        if secret and hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise InsecureKeyFile(f"{path} is owned by uid {st.st_uid}, not by this user")
        if not secret and perms & 0o022:
            raise InsecureKeyFile(f"{path} has mode {perms:04o}; others must not write it")
        raw = fh.read(_MAX_KEYFILE_BYTES + 1)
    if len(raw) > _MAX_KEYFILE_BYTES:
        raise KeyFileError(f"{path} is too large for a key file")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting
        raise KeyFileError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != kind:
        raise KeyFileError(f"{path} is not a {kind} file")
    if doc.get("version") != KEYFILE_VERSION:
        raise KeyFileError(f"{path}: unsupported key file version {doc.get('version')!r}")
    return doc


def _field(doc: Mapping[str, Any], name: str, typ: type, path: str | Path) -> Any:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, typ):
        raise KeyFileError(f"{path}: field {name!r} missing or not {typ.__name__}")
    return value


def _hex(doc: Mapping[str, Any], name: str, path: str | Path) -> bytes:
    try:
        return bytes.fromhex(_field(doc, name, str, path))
    except ValueError:
        raise KeyFileError(f"{path}: field {name!r} is not hex") from None


def _card_doc(card: ClientCard) -> dict[str, Any]:
    return {
        "kind": "secagg.client.public",
        "version": KEYFILE_VERSION,
        "client_id": card.client_id,
        "curve_public": card.curve_public.decode("ascii"),
        "identity_public": card.identity.to_bytes().hex(),
        "binding_signature": card.binding_signature.hex(),
    }


def write_server_keys(
    folder: str | Path, keys: CurveKeyPair, *, force: bool = False
) -> tuple[Path, Path]:
    """Write the server's public (0644) and secret (0600) key files; return their paths.

    Raises:
        KeyFileExists: either file exists and ``force`` is false (nothing is written).
        OSError: the folder cannot be created or written.
    """
    pub, sec = server_paths(folder)
    base = {"version": KEYFILE_VERSION, "curve_public": keys.public.decode("ascii")}
    secret_doc = {**base, "kind": "secagg.server.secret", "curve_secret": keys.secret.decode()}
    _write_pair((pub, {**base, "kind": "secagg.server.public"}), (sec, secret_doc), force)
    return pub, sec


def write_client_keys(
    folder: str | Path, keys: ClientKeys, *, force: bool = False
) -> tuple[Path, Path]:
    """Write a client's public card (0644) and secret keys (0600); return their paths.

    Raises:
        KeyFileExists: either file exists and ``force`` is false (nothing is written).
        OSError: the folder cannot be created or written.
    """
    pub, sec = client_paths(folder, keys.client_id)
    card = _card_doc(keys.card)
    secret_doc = {
        **card,
        "kind": "secagg.client.secret",
        "curve_secret": keys.curve.secret.decode("ascii"),
        "identity_secret": keys.identity.private_bytes().hex(),
    }
    _write_pair((pub, card), (sec, secret_doc), force)
    return pub, sec


def _wrap_key_errors(path: str | Path, exc: Exception) -> KeyFileError:
    if isinstance(exc, KeyFileError):
        return exc
    return KeyFileError(f"{path}: {exc}")


def load_server_public(path: str | Path) -> bytes:
    """The server's Z85 Curve public key from its public (or secret) key file.

    Raises:
        FileNotFoundError, InsecureKeyFile, KeyFileError: see :func:`_read_doc`.
    """
    p = Path(path)
    is_secret = p.name.endswith(".secret.json")
    kind = "secagg.server.secret" if is_secret else "secagg.server.public"
    doc = _read_doc(p, kind, secret=is_secret)
    try:
        return check_curve_key("curve_public", _field(doc, "curve_public", str, p))
    except (TypeError, ValueError) as exc:
        raise _wrap_key_errors(p, exc) from None


def load_server_keys(path: str | Path) -> CurveKeyPair:
    """The server's Curve key pair from its secret key file (mode 0600, owned by us).

    Raises:
        FileNotFoundError, InsecureKeyFile, KeyFileError: unreadable, unsafe or malformed.
        KeyBindingError: the secret does not match the public key stored beside it.
    """
    doc = _read_doc(path, "secagg.server.secret", secret=True)
    try:
        pub = _field(doc, "curve_public", str, path).encode()
        sec = _field(doc, "curve_secret", str, path).encode()
        return CurveKeyPair(public=pub, secret=sec)
    except KeyBindingError:
        raise
    except (TypeError, ValueError) as exc:
        raise _wrap_key_errors(path, exc) from None


def _card_from_doc(doc: Mapping[str, Any], path: str | Path) -> ClientCard:
    try:
        return ClientCard(
            client_id=_field(doc, "client_id", int, path),
            curve_public=_field(doc, "curve_public", str, path).encode(),
            identity=VerifyKey.from_bytes(_hex(doc, "identity_public", path)),
            binding_signature=_hex(doc, "binding_signature", path),
        )
    except KeyBindingError:
        raise
    except (TypeError, ValueError) as exc:
        raise _wrap_key_errors(path, exc) from None


def load_client_card(path: str | Path) -> ClientCard:
    """A client's public card, binding verified.

    Raises:
        FileNotFoundError, InsecureKeyFile, KeyFileError: unreadable, unsafe or malformed.
        KeyBindingError: the identity key did not sign this Curve key and client id.
    """
    return _card_from_doc(_read_doc(path, "secagg.client.public", secret=False), path)


def load_client_keys(path: str | Path) -> ClientKeys:
    """A client's secret keys, with every public half recomputed and compared.

    Raises:
        FileNotFoundError, InsecureKeyFile, KeyFileError: unreadable, unsafe or malformed.
        KeyBindingError: a secret does not match its public half, or the binding fails.
    """
    doc = _read_doc(path, "secagg.client.secret", secret=True)
    card = _card_from_doc(doc, path)
    try:
        curve = CurveKeyPair(card.curve_public, _field(doc, "curve_secret", str, path).encode())
        identity = SigningKey.from_private_bytes(_hex(doc, "identity_secret", path))
    except KeyBindingError:
        raise
    except (TypeError, ValueError) as exc:
        raise _wrap_key_errors(path, exc) from None
    if identity.verify_key != card.identity:
        raise KeyBindingError(f"{path}: identity secret does not match identity_public")
    return ClientKeys(card.client_id, curve, identity)


def load_allowlist(folder: str | Path) -> Allowlist:
    """Every ``client-<id>.public.json`` in ``folder`` (see :func:`load_client_card`).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        InsecureKeyFile / KeyFileError / KeyBindingError: a bad card, or duplicate ids or keys.
    """
    paths = sorted(p for p in Path(folder).iterdir() if _CLIENT_PUBLIC_RE.match(p.name))
    return Allowlist(load_client_card(p) for p in paths)

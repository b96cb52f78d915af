"""Curve keys, the identity binding, and key files with safe permissions."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
import zmq

from secagg.errors import InvalidKeyError, SecAggError
from secagg.fl_core.errors import InsecureKeyFile, KeyBindingError, KeyFileError, KeyFileExists
from secagg.fl_core.identity import keyfiles
from secagg.fl_core.identity.keys import (
    Allowlist,
    ClientCard,
    ClientKeys,
    CurveKeyPair,
    binding_message,
)
from secagg.sign import SigningKey


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_curve_pair_checks_halves_belong_together() -> None:
    a, b = CurveKeyPair.generate(), CurveKeyPair.generate()
    assert zmq.curve_public(a.secret) == a.public
    with pytest.raises(KeyBindingError):
        CurveKeyPair(public=a.public, secret=b.secret)
    with pytest.raises(InvalidKeyError):
        CurveKeyPair(public=b"short", secret=a.secret)
    with pytest.raises(InvalidKeyError):
        CurveKeyPair(public=b'"' * 40, secret=a.secret)  # not in the Z85 alphabet
    assert a.secret.decode() not in repr(a)


def test_card_binds_identity_to_curve_key_and_id() -> None:
    k = ClientKeys.generate(7)
    card = k.card
    assert card.identity == k.identity.verify_key and card.curve_public == k.curve.public
    # the signature covers each of the three: change any one and the card is refused
    other = ClientKeys.generate(8)
    for edit in ({"client_id": 8}, {"curve_public": other.curve.public},
                 {"identity": other.identity.verify_key}):
        with pytest.raises(KeyBindingError):
            dataclasses.replace(card, **edit)
    assert dataclasses.replace(card, client_id=7) == card  # unchanged: still accepted
    assert k.identity.private_bytes().hex() not in repr(k)
    assert k.curve.secret.decode() not in repr(k)


def test_mismatched_pair_fails_the_binding_check() -> None:
    a, b = ClientKeys.generate(1), ClientKeys.generate(2)
    # a's Curve key presented with b's identity key and b's binding signature
    with pytest.raises(KeyBindingError):
        ClientCard(1, a.curve.public, b.identity.verify_key, b.card.binding_signature)
    # b's identity signing a's Curve key under id 2 does not transfer to id 1
    sig = b.identity.sign(binding_message(2, a.curve.public, b.identity.verify_key))
    ClientCard(2, a.curve.public, b.identity.verify_key, sig)  # fine as signed
    with pytest.raises(KeyBindingError):
        ClientCard(1, a.curve.public, b.identity.verify_key, sig)
    with pytest.raises(KeyBindingError):
        ClientCard(1, a.curve.public, a.identity.verify_key, bytes(64))
    assert issubclass(KeyBindingError, SecAggError)


def test_allowlist_indexes_and_refuses_duplicates() -> None:
    a, b = ClientKeys.generate(1), ClientKeys.generate(2)
    al = Allowlist([a.card, b.card])
    assert len(al) == 2 and set(al) == {1, 2} and al[2] == b.card
    assert al.client_for_curve_key(a.curve.public) == 1
    assert al.client_for_curve_key(CurveKeyPair.generate().public) is None
    with pytest.raises(KeyFileError, match="twice"):
        Allowlist([a.card, a.card])
    twin = ClientKeys(3, a.curve, SigningKey.generate())
    with pytest.raises(KeyFileError, match="share a Curve key"):
        Allowlist([a.card, twin.card])


def test_files_have_safe_modes_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        spub, ssec = keyfiles.write_server_keys(tmp_path / "k", CurveKeyPair.generate())
        cpub, csec = keyfiles.write_client_keys(tmp_path / "k", ClientKeys.generate(4))
    finally:
        os.umask(old)
    assert (_mode(ssec), _mode(csec), _mode(spub), _mode(cpub)) == (0o600, 0o600, 0o644, 0o644)
    assert _mode(tmp_path / "k") == 0o700
    assert [p.name for p in (tmp_path / "k").iterdir() if p.name.startswith(".")] == []


def test_round_trip_through_files(tmp_path: Path) -> None:
    server, client = CurveKeyPair.generate(), ClientKeys.generate(12)
    keyfiles.write_server_keys(tmp_path, server)
    keyfiles.write_client_keys(tmp_path, client)
    pub, sec = keyfiles.server_paths(tmp_path)
    assert keyfiles.load_server_keys(sec) == server
    assert keyfiles.load_server_public(pub) == server.public
    cpub, csec = keyfiles.client_paths(tmp_path, 12)
    loaded = keyfiles.load_client_keys(csec)
    assert loaded.curve == client.curve and loaded.identity.verify_key == client.card.identity
    assert keyfiles.load_client_card(cpub) == client.card
    assert dict(keyfiles.load_allowlist(tmp_path)) == {12: client.card}
    assert "identity_secret" not in json.loads(cpub.read_text())


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = CurveKeyPair.generate()
    keyfiles.write_server_keys(tmp_path, first)
    with pytest.raises(KeyFileExists):
        keyfiles.write_server_keys(tmp_path, CurveKeyPair.generate())
    assert keyfiles.load_server_keys(keyfiles.server_paths(tmp_path)[1]) == first
    second = CurveKeyPair.generate()
    keyfiles.write_server_keys(tmp_path, second, force=True)
    assert keyfiles.load_server_keys(keyfiles.server_paths(tmp_path)[1]) == second
    assert issubclass(KeyFileExists, FileExistsError)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o602])
def test_loading_a_readable_secret_is_refused(tmp_path: Path, mode: int) -> None:
    _, sec = keyfiles.write_client_keys(tmp_path, ClientKeys.generate(1))
    sec.chmod(mode)
    with pytest.raises(InsecureKeyFile, match="0600"):
        keyfiles.load_client_keys(sec)


def test_loading_a_writable_public_file_is_refused(tmp_path: Path) -> None:
    pub, _ = keyfiles.write_client_keys(tmp_path, ClientKeys.generate(1))
    pub.chmod(0o666)
    with pytest.raises(InsecureKeyFile):
        keyfiles.load_client_card(pub)
    with pytest.raises(InsecureKeyFile):
        keyfiles.load_allowlist(tmp_path)


def test_symlinked_and_special_key_files_are_refused(tmp_path: Path) -> None:
    _, sec = keyfiles.write_server_keys(tmp_path / "real", CurveKeyPair.generate())
    link = tmp_path / "server.secret.json"
    link.symlink_to(sec)
    with pytest.raises(InsecureKeyFile, match="symbolic link"):
        keyfiles.load_server_keys(link)
    fifo = tmp_path / "fifo.secret.json"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(InsecureKeyFile, match="regular file"):
        keyfiles.load_server_keys(fifo)  # must not block waiting for a writer


def _rewrite(path: Path, **changes: object) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def test_tampered_files_fail_the_binding(tmp_path: Path) -> None:
    a, b = ClientKeys.generate(1), ClientKeys.generate(2)
    apub, asec = keyfiles.write_client_keys(tmp_path, a)
    _rewrite(apub, curve_public=b.curve.public.decode())  # swap in another Curve key
    with pytest.raises(KeyBindingError):
        keyfiles.load_client_card(apub)
    _rewrite(apub, curve_public=a.curve.public.decode(), client_id=2)  # claim another id
    with pytest.raises(KeyBindingError):
        keyfiles.load_client_card(apub)
    _rewrite(asec, curve_secret=b.curve.secret.decode())  # secret of another pair
    with pytest.raises(KeyBindingError):
        keyfiles.load_client_keys(asec)
    _rewrite(asec, curve_secret=a.curve.secret.decode(),
             identity_secret=b.identity.private_bytes().hex())
    with pytest.raises(KeyBindingError, match="identity"):
        keyfiles.load_client_keys(asec)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"\xff\xfe", b"[" * 50_000, b"[]", b'{"kind": "secagg.client.public"}',
     b'{"kind": "secagg.client.public", "version": 2}',
     b'{"kind": "secagg.server.public", "version": 1, "curve_public": "x"}'],
)
def test_malformed_public_files_raise_key_file_error(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "client-1.public.json"
    p.write_bytes(content)
    p.chmod(0o644)
    with pytest.raises(KeyFileError):
        keyfiles.load_client_card(p)

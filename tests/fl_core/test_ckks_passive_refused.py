"""Passive CKKS trusts the server as a relay (tests/protocols/test_ckks_passive_attack.py), so
the runtime runs it only under ``--insecure``: the server's flags never ask for it otherwise,
and a client holding identity keys refuses a passive key setup the server proposes (a
malicious server cannot downgrade it)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pytest

from secagg.fl_core.cli.commands import config_args
from secagg.fl_core.identity.keys import ClientKeys
from secagg.fl_core.runtime.client_app import ClientSettings, _Session

pytest.importorskip("tenseal")


class _Wire:
    """Stands in for the ClientTransport: records what the client sends."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.sent: list[tuple[int, int, bytes]] = []

    def send(self, round_id: int, stage: int, raw: bytes) -> None:
        self.sent.append((round_id, stage, raw))


def _keys_message(active: bool, keys: dict[int, ClientKeys]) -> dict[str, Any]:
    return {"type": "keys", "round": 7, "epoch": 1, "first_stage": 1, "members": [0, 1, 2],
            "config": {"protocol": "ckks", "n": 3, "active": active},
            "verify_keys": {str(c): k.identity.verify_key.to_bytes().hex()
                            for c, k in keys.items()} if active else None}


def _session(keys: ClientKeys | None) -> tuple[_Session, _Wire]:
    wire = _Wire(0)
    # no policy (insecure=True): the key setup's own check, not the policy's, is under test
    session = _Session(wire, keys, lambda r, s: np.zeros_like(s),  # type: ignore[arg-type]
                       ClientSettings(), insecure=True)
    return session, wire


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
def test_the_server_asks_for_passive_ckks_only_under_insecure(protocol: str) -> None:
    def args(insecure: bool) -> dict[str, Any]:
        return config_args(argparse.Namespace(protocol=protocol, n=3, insecure=insecure))

    assert args(False)["active"] is True
    assert args(True)["active"] is False


def test_a_client_with_identity_keys_refuses_a_passive_key_setup() -> None:
    keys = {c: ClientKeys.generate(c) for c in range(3)}
    session, wire = _session(keys[0])
    session.on_keys(7, _keys_message(False, keys))  # a server downgrading to passive
    assert session.keysetup is None and not wire.sent
    session.on_keys(8, _keys_message(True, keys))  # the same client takes an active one
    assert session.keysetup is not None and len(wire.sent) == 1


def test_an_insecure_client_takes_part_in_a_passive_key_setup() -> None:
    session, wire = _session(None)  # --insecure: no key files loaded
    session.on_keys(7, _keys_message(False, {}))
    assert session.keysetup is not None and len(wire.sent) == 1


def test_a_copy_of_a_key_announcement_gets_the_same_reply_and_a_different_one_nothing() -> None:
    """The driver resends a ``keys`` announcement a member has not answered (issue 22). A copy
    (same round id, same bytes) gets the very messages of the first reply; a different
    announcement under that round id (a server fishing for a second advertisement of the same
    epoch, with other keys) gets nothing, and neither does an older round id."""
    keys = {c: ClientKeys.generate(c) for c in range(3)}
    session, wire = _session(keys[0])
    head = _keys_message(True, keys)
    session.on_keys(7, head, b"digest-1")
    first = list(wire.sent)
    assert first and session.keysetup is not None
    session.on_keys(7, head, b"digest-1")  # the resent copy
    assert wire.sent[len(first):] == first
    n = len(wire.sent)
    session.on_keys(7, {**head, "epoch": 2}, b"digest-2")  # another announcement, same id
    session.on_keys(6, head, b"digest-0")
    assert len(wire.sent) == n
    session.on_keys(8, {**head, "round": 8}, b"digest-3")  # a later setup is answered
    assert len(wire.sent) > n and wire.sent[-1][0] == 8

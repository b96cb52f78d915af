"""A stand-in for a client's transport in the malicious-server tests: it records what the real
client session sends, so a test can assert that nothing left at a protocol stage."""

from __future__ import annotations


class Wire:
    """Records ``(round_id, stage, payload)`` for every message the client sends."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.sent: list[tuple[int, int, bytes]] = []

    def send(self, round_id: int, stage: int, payload: object) -> None:
        self.sent.append((round_id, stage, bytes(payload)))  # type: ignore[call-overload]

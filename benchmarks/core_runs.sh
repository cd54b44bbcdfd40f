#!/usr/bin/env bash
# Issue 2's measured runs: the whole pipeline with the tutorial settings on full MNIST,
# for the tutorial's conv net and LeNet-300-100, then a summary for RESULTS.md.
# Usage: bash benchmarks/core_runs.sh [OUT_DIR]   (default benchmarks/runs; needs SWS_DATA_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/runs}"
mkdir -p "$out"
for model in lenet-300-100 tutorial-conv; do
    run="/tmp/sws-core-$model"
    /usr/bin/time -f "$model wall %e s, peak RSS %M kB" .venv/bin/sws run --model "$model" \
        --out "$run" --force --quiet
    mkdir -p "$out/$model"
    cp "$run"/{model.sws,metrics.json,history.json,config.json} "$out/$model/"
done
.venv/bin/python benchmarks/summarize_run.py /tmp/sws-core-lenet-300-100 /tmp/sws-core-tutorial-conv

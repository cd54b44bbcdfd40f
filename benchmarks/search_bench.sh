#!/usr/bin/env bash
# Hyper-parameter search on LeNet-300-100 (issue 6): 32 trials, validation error against CR.
#
# Budget (fits about 40 minutes on a shared 2-core machine): all 60,000 training images,
# 10,000 of them held out as the validation split that scores the trials (50,000 train);
# one shared pretraining of 5 epochs; 10 retraining epochs per trial; one worker.
# Trial 0 is the tutorial's settings (enqueued), the untuned baseline scored the same way.
#
#   OMP_NUM_THREADS=1 SWS_DATA_DIR=../shared/data/mnist benchmarks/search_bench.sh [OUT] [TRIALS]
#
# Interrupt and rerun to resume; `sws search report OUT` prints the front and writes OUT/pareto.png.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/runs/search_lenet300}
TRIALS=${2:-32}
SWS=${SWS:-.venv/bin/sws}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$(date +%s)
"$SWS" search run "$OUT" --model lenet-300-100 --trials "$TRIALS" --n-workers 1 \
    --train-subset 0 --val-size 10000 --pretrain-epochs 5 --epochs 10 --quiet
echo "wall: $(( $(date +%s) - start )) s"
"$SWS" search report "$OUT"

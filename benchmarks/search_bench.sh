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
# Then, as a reference, the tutorial's settings at their own 30 epochs from the same pretrained
# net, scored the same way (validation error of the .sws file, CR from its bytes): OUT/tutorial_30_epochs.
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
"${PYTHON:-.venv/bin/python}" - "$OUT" 30 <<'PY'
import json, sys, time
from pathlib import Path
from sws.runs.stages import compress_run
from sws.format.stats import file_stats
from sws.runs.stages import load_data, run_quantize, run_retrain
from sws.runs.rundir import RunDir
from sws.study.search import _val_error
from sws.study.searchspace import TUTORIAL, configs

search, epochs = Path(sys.argv[1]), int(sys.argv[2])
settings = json.loads((search / "search.json").read_text())
run = RunDir.create(search / f"tutorial_{epochs}_epochs", force=True)
tensors, meta = RunDir(search).load("pretrained")
run.save("pretrained", tensors, meta)
rcfg, qcfg = configs(TUTORIAL, {**settings, "epochs": epochs})
t0 = time.perf_counter()
run_retrain(run, rcfg, quiet=True)
q = run_quantize(run, qcfg)
compress_run(run.path, run.path / "model.sws")
_, val, _ = load_data(meta["data"])
t = file_stats((run.path / "model.sws").read_bytes())["total"]
res = {"epochs": epochs, "val_error": _val_error(run.path / "model.sws", val), "cr": t["cr_file"],
       "test_error": q["test_error"], "nonzero_share": q["nonzero_share"],
       "seconds": time.perf_counter() - t0}
run.write_json("trial.json", res)
print("tutorial settings,", json.dumps(res))
PY

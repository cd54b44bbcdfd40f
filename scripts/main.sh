#!/usr/bin/env bash
# The main job: create .venv, install sws, run the whole pipeline on MNIST.
# Data: $SWS_DATA_DIR, else ../shared/data/mnist when present, else the user cache
# (downloaded there with a checksum check when online).  Extra arguments go to `sws run`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e .
if [ -z "${SWS_DATA_DIR:-}" ] && [ -d ../shared/data/mnist ]; then
    export SWS_DATA_DIR="$(cd ../shared/data/mnist && pwd)"
fi
model="${MODEL:-tutorial-conv}"
exec .venv/bin/sws run --model "$model" --out "runs/$model-$(date +%Y%m%d-%H%M%S)" --figures "$@"

#!/usr/bin/env bash
# The test suite: create .venv and install sws with its test extras if needed, then ruff and pytest.
# Tests read MNIST from $SWS_DATA_DIR, default ../shared/data/mnist.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[test]"
bash tests/setup_browser.sh || echo "headless Chromium unavailable: the browser test will skip"
if [ -z "${SWS_DATA_DIR:-}" ] && [ -d ../shared/data/mnist ]; then
    export SWS_DATA_DIR="$(cd ../shared/data/mnist && pwd)"
fi
.venv/bin/ruff check src tests benchmarks examples
exec .venv/bin/python -m pytest -q "$@"

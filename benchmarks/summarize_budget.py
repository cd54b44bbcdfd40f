#!/usr/bin/env python
"""Per-epoch figures of retraining runs: the retrained and the post-processed network.

    python benchmarks/summarize_budget.py RUN [RUN ...]

Prints, per run, each retraining epoch's validation error of the retrained network, of the
post-processed one (pp), its non-zero share and CR from the bytes it would write, the epoch the
accuracy budget kept and the final test error from metrics.json.
"""

import json
import sys
from pathlib import Path


def main(argv):
    for run in map(Path, argv):
        hist = [r for r in json.loads((run / "history.json").read_text()) if r.get("stage") == "retrain"]
        metrics = json.loads((run / "metrics.json").read_text())
        budget = metrics.get("retrained", {}).get("budget", {})
        print(f"== {run}  kept epoch {budget.get('epoch')} ({budget.get('status')}), "
              f"limit {100 * (budget.get('limit_val_error') or float('nan')):.2f} %")
        for r in hist:
            print(f"  {r['epoch']:>3}  val {100 * r.get('val_error', float('nan')):5.2f} %  "
                  f"pp {100 * r.get('pp_val_error', float('nan')):5.2f} %  "
                  f"nz {100 * r.get('pp_nonzero_share', 0):5.2f} %"
                  f"  CR {r.get('pp_cr', float('nan')):7.1f}  sd0 {r['prior']['stds'][0]:.4f}  {r['seconds']:.1f} s")
        q = metrics.get("quantized", {})
        if q:
            print(f"  final: test error {100 * q.get('test_error', float('nan')):.2f} %, "
                  f"non-zero {100 * q['nonzero_share']:.2f} %, file {metrics.get('file', {}).get('bytes')} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Summarise a run folder for benchmarks/RESULTS.md: accuracies, sparsity, file size, epoch times.

Usage: python benchmarks/summarize_run.py RUN_DIR [RUN_DIR ...]

The timing ratio compares the mean retraining epoch with the mean plain
(pretraining) epoch of the same run: same model, batch size, data and process.
Epoch times exclude the per-epoch evaluation.
"""

import json
import statistics
import sys
from pathlib import Path


def summarize(run: Path) -> str:
    h = json.loads((run / "history.json").read_text())
    m = json.loads((run / "metrics.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    q = m["quantized"]
    pre = [r["seconds"] for r in h if r["stage"] == "pretrain"]
    re = [r["seconds"] for r in h if r["stage"] == "retrain"]
    cmd = next(iter(cfg.values()))["command"]
    sws = run / "model.sws"
    n = sum(row["size"] for row in q["layers"].values())
    size = sws.stat().st_size if sws.exists() else None
    lines = [
        f"- command: `{cmd}`",
        f"- test accuracy: pretrained {q['pretrained_test_accuracy']:.4f}, retrained "
        f"{q['retrained_test_accuracy']:.4f}, post-processed {q['test_accuracy']:.4f} "
        f"(error {100 * q['test_error']:.2f}%)",
        f"- non-zero weights {100 * q['nonzero_share']:.2f}%, distinct values {q['distinct_values']} "
        f"({q['components_before_merge']} components -> {q['components_after_merge']} after merging)",
    ]
    if size:
        lines.append(f"- `model.sws`: {size:,} bytes, CR from the file's bytes {32 * n / (8 * size):.1f}")
    lines.append(f"- epochs: {len(pre)} pretraining, mean {statistics.mean(pre):.2f} s; {len(re)} "
                 f"retraining, mean {statistics.mean(re):.2f} s; ratio retrain/plain "
                 f"{statistics.mean(re) / statistics.mean(pre):.2f} "
                 f"(median {statistics.median(re) / statistics.median(pre):.2f})")
    lines.append(f"- wall time of the stages: pretrain {m['pretrained']['seconds']:.0f} s, retrain "
                 f"{m['retrained']['seconds']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"### {arg}\n{summarize(Path(arg))}\n")

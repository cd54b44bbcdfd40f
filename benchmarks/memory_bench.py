"""Peak memory: evaluating a .sws file over a stream of 10,000-image batches, and retraining.

Each measurement runs in its own child process; its peak RSS comes from
``os.wait4`` (the kernel's ru_maxrss for that child alone).

    python benchmarks/memory_bench.py --sws RUN/model.sws [--batches 20]
    python benchmarks/memory_bench.py --retrain PRETRAINED_RUN [--subset 10000] [--epochs 1]

``--sws``: (1) ``sws evaluate FILE`` as users run it; (2) the network loaded
with ``sws.load`` fed ``--batches`` batches of 10,000 test images, RSS read
after every batch: a leak shows as growth from batch to batch.
``--retrain``: ``sws retrain`` of a copy of a pretrained run folder (its data
settings limited to ``--subset`` training images) for ``--epochs`` epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STREAM = r"""
import json, sys, torch
import sws
from sws.zoo.mnist import load_mnist
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
path, n, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None
torch.set_grad_enabled(False)
_, _, test = load_mnist(data_dir)
x, y = test.x[:10000].contiguous(), test.y[:10000]
del _
model = sws.load(path)
trace = [rss()]
for i in range(n):
    out = model(x)
    acc = (out.argmax(1) == y).float().mean().item()
    del out
    trace.append(rss())
print(json.dumps({"rss_mib": trace, "accuracy": acc}))
"""


def measure(cmd: list[str], env=None) -> tuple[float, float, str]:
    """(peak RSS MiB, wall seconds, stdout) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # read before waiting so a full pipe cannot block the child
    out, err = p.stdout.read(), p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}): {err.strip()[-500:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sws", type=Path)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--retrain", type=Path)
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("SWS_DATA_DIR", ""))
    args = ap.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    py = sys.executable
    results = {}
    if args.sws:
        data = ["--data-dir", args.data_dir] if args.data_dir else []
        peak, wall, out = measure([py, "-m", "sws.cli", "evaluate", str(args.sws), *data], env)
        results["sws_evaluate"] = {"peak_rss_mib": round(peak, 1), "seconds": round(wall, 2),
                                   "output": out.strip()}
        peak, wall, out = measure([py, "-c", STREAM, str(args.sws), str(args.batches), args.data_dir], env)
        s = json.loads(out)
        trace = s["rss_mib"]
        results["stream"] = {"batches": args.batches, "batch_images": 10000, "peak_rss_mib": round(peak, 1),
                             "rss_after_load_mib": round(trace[0], 1),
                             "rss_after_batch_1_mib": round(trace[1], 1),
                             "rss_after_last_batch_mib": round(trace[-1], 1),
                             "growth_batch_2_to_last_mib": round(trace[-1] - trace[2], 1),
                             "rss_trace_mib": [round(v, 1) for v in trace],
                             "accuracy": s["accuracy"], "seconds": round(wall, 2)}
    if args.retrain:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            run.mkdir()
            for name in ("pretrained.safetensors", "pretrained.json"):
                shutil.copy(args.retrain / name, run / name)
            meta = json.loads((run / "pretrained.json").read_text())
            meta["data"]["train_subset"] = args.subset
            (run / "pretrained.json").write_text(json.dumps(meta))
            data = ["--data-dir", args.data_dir] if args.data_dir else []
            peak, wall, out = measure([py, "-m", "sws.cli", "retrain", str(run), "--epochs",
                                       str(args.epochs), "--quiet", *data], env)
            results["retrain"] = {"model": meta["model"], "train_images": args.subset,
                                  "epochs": args.epochs, "peak_rss_mib": round(peak, 1),
                                  "seconds": round(wall, 1), "output": out.strip()}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

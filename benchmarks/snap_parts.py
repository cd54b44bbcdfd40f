#!/usr/bin/env python
"""Where a step of the snap phase goes, against a retraining step, on a finished run's kept state.

Usage: python benchmarks/snap_parts.py RUN_DIR [--threads 1] [--steps 60] [--blocks 4]

Blocks of STEPS steps (the first 5 not counted), alternately retraining steps and snap-phase steps
(``sws.method.snap``: the covered weights snapped for the forward and backward pass), each block from
the kept state, batch 256 of random MNIST-shaped data.  Per part, the median: entering the snap
(the table, ``Snap.table``, then the swap pass), the forward and backward pass, leaving it (the
continuous weights copied back), the prior's call, the optimiser's step, the whole step; and the
table alone inside the step.  One thread is timed by the thread's CPU time, two by the wall clock.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from prior_parts import fixed_batch, kept_state
from sws.config import retrain_config
from sws.method.loop import retrain_optimizer
from sws.method.snap import Snap


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--blocks", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(args.run_dir)
    cfg = retrain_config("tutorial")
    opt = retrain_optimizer(model, prior, cfg)
    snap = Snap(prior, covered, 1e-2)
    tables = []
    table = snap.table

    def timed_table():
        t0 = clock()
        out = table()
        tables.append(clock() - t0)
        return out
    snap.table = timed_table
    x, y = fixed_batch()
    cx = torch.zeros((), dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    names = ("enter", "forward+backward", "leave", "call", "optimiser", "step")
    parts = {kind: {k: [] for k in names} for kind in ("retraining", "snap phase")}
    for _ in range(args.blocks):
        for kind in parts:
            model.load_state_dict(state)
            prior.load_state_dict(pstate)
            for i in range(args.steps + 5):
                t0 = clock()
                block = snap.applied() if kind == "snap phase" else None
                if block is not None:
                    block.__enter__()
                t1 = clock()
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t2 = clock()
                if block is not None:
                    block.__exit__(None, None, None)
                t3 = clock()
                prior.backward_complexity(covered, cfg.tau / 60000, acc=cx, factor=len(y))
                t4 = clock()
                opt.step()
                t5 = clock()
                if i >= 5:
                    for k, v in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
                        parts[kind][k].append(v)
    print(f"threads {args.threads}, {args.blocks} x {args.steps} steps per kind; medians in us")
    print("| kind | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for kind, p in parts.items():
        print(f"| {kind} | " + " | ".join(f"{1e6 * statistics.median(p[k]):.0f}" for k in names) + " |")
    print(f"the table (Snap.table) inside the snap-phase steps: {1e6 * statistics.median(tables):.0f} us")


if __name__ == "__main__":
    main()

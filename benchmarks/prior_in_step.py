#!/usr/bin/env python
"""The prior's call timed alone and inside a training step, on a run's kept state (issue 15).

Usage: python benchmarks/prior_in_step.py RUN_DIR [--threads 1] [--blocks 12] [--variant V]

Each block starts from the kept state, runs 30 steps (forward, backward, the prior's call,
Adam at lr 1e-4 on one fixed random batch) timing only the call, then 30 calls alone.  One
thread is timed by the thread's CPU time, more by the wall clock.  --variant: ``no-adam`` (the
weights stay put), ``reuse-grads`` (``zero_grad(set_to_none=False)``), ``touch`` (read every
weight and gradient just before the call), ``adam-only`` (no forward or backward).
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from prior_parts import fixed_batch, kept_state
from sws.method.loop import adam


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--variant", choices=("step", "no-adam", "reuse-grads", "touch", "adam-only"), default="step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(args.run_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = adam(model.parameters(), 1e-4)
    x, y = fixed_batch()
    scale = 0.003 / 60000
    for p in covered:
        p.grad = torch.zeros_like(p)
    inside, alone = [], []
    for _ in range(args.blocks):
        model.load_state_dict(state)
        ts = []
        for _ in range(30):
            if args.variant != "adam-only":
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=args.variant != "reuse-grads")
                loss.backward()
            if args.variant == "touch":
                for p in covered:
                    p.detach().sum(), p.grad.sum()
            t = clock()
            prior.backward_complexity(covered, scale)
            ts.append(clock() - t)
            if args.variant != "no-adam":
                opt.step()
        inside.append(statistics.median(ts))
        t = clock()
        for _ in range(30):
            prior.backward_complexity(covered, scale)
        alone.append((clock() - t) / 30)
    print(f"{args.variant}: the call inside a step {1e6 * statistics.median(inside):.0f} us, "
          f"alone {1e6 * statistics.median(alone):.0f} us")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The prior's calls that plan the geometry against the others, inside retraining steps (issue 15).

Usage: python benchmarks/prior_plan_cost.py RUN_DIR [--threads 1] [--steps 800]

From the run's kept state, STEPS retraining steps (forward, backward, the prior's call, the four-group
Adam); the call timed by the wall clock and split by whether it planned (every eighth call,
``Workspace.SETS_EVERY``): the median of each kind, and what planning adds per call on average.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from prior_parts import fixed_batch, kept_state
from sws.config import retrain_config
from sws.method.loop import retrain_optimizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=800)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, model, prior, covered, _ = kept_state(args.run_dir)
    x, y = fixed_batch()
    cfg = retrain_config("tutorial")
    opt = retrain_optimizer(model, prior, cfg)
    cx = torch.zeros((), dtype=torch.float64)
    ws = prior._workspace
    calls = {True: [], False: []}
    for _ in range(args.steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        plans = ws.calls % ws.SETS_EVERY == 0
        t = time.perf_counter()
        prior.backward_complexity(covered, cfg.tau / 60000, acc=cx, factor=len(y))
        calls[plans].append(time.perf_counter() - t)
        opt.step()
    a, b = statistics.median(calls[True]), statistics.median(calls[False])
    print(f"{args.threads} threads: a call that plans {1e6 * a:.0f} us, the others {1e6 * b:.0f} us; planning adds "
          f"{1e6 * (a - b) / ws.SETS_EVERY:.0f} us per call ({len(calls[True])} plans)")


if __name__ == "__main__":
    main()

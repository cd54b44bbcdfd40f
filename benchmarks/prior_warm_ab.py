#!/usr/bin/env python
"""The kernel's warm-up (its tables read in order before the pass) on and off, in one process (issue 15).

Usage: python benchmarks/prior_warm_ab.py RUN_DIR [--threads 1] [--rounds 40]

Three kinds of block of 20 steps (after 3 more), in a shuffled order each round, each from the run's
kept state: the plain step, the retraining step with the warm-up, and without it (SWS_NO_WARM=1,
read by the kernel at every call).  One thread is timed by the thread's CPU time.
"""

import argparse
import os
import random
import statistics
import time

import torch
import torch.nn.functional as F

from prior_parts import fixed_batch, kept_state
from sws.config import retrain_config
from sws.method.loop import adam, retrain_optimizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(args.run_dir)
    x, y = fixed_batch()
    cfg = retrain_config("tutorial")
    scale = cfg.tau / 60000
    opt, plain_opt = retrain_optimizer(model, prior, cfg), adam(model.parameters(), 1e-4)
    cx = torch.zeros((), dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    steps = {k: [] for k in ("plain", "warm", "no warm-up")}
    calls = {"warm": [], "no warm-up": []}
    rng = random.Random(0)
    for _ in range(args.rounds):
        for kind in rng.sample(list(steps), 3):
            if kind == "no warm-up":
                os.environ["SWS_NO_WARM"] = "1"
            else:
                os.environ.pop("SWS_NO_WARM", None)
            model.load_state_dict(state)
            prior.load_state_dict(pstate)
            o = plain_opt if kind == "plain" else opt
            ts, cs = [], []
            for _ in range(23):
                t0 = clock()
                loss = F.cross_entropy(model(x), y)
                o.zero_grad(set_to_none=True)
                loss.backward()
                if kind != "plain":
                    t1 = clock()
                    prior.backward_complexity(covered, scale, acc=cx, factor=len(y))
                    cs.append(clock() - t1)
                o.step()
                ts.append(clock() - t0)
            steps[kind].append(statistics.mean(ts[3:]))
            if kind != "plain":
                calls[kind].append(statistics.median(cs[3:]))
    os.environ.pop("SWS_NO_WARM", None)
    for k in ("warm", "no warm-up"):
        r = [a / p for a, p in zip(steps[k], steps["plain"])]
        print(f"{args.threads} threads, {k}: step {1e3 * statistics.median(steps[k]):.3f} ms, ratio "
              f"{statistics.median(r):.3f}, the call {1e6 * statistics.median(calls[k]):.0f} us")
    d = [a - b for a, b in zip(steps["warm"], steps["no warm-up"])]
    print(f"plain step {1e3 * statistics.median(steps['plain']):.3f} ms; warm - no warm-up per step, same round: "
          f"median {1e6 * statistics.median(d):+.0f} us ({args.rounds} rounds)")


if __name__ == "__main__":
    main()

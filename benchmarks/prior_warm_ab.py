#!/usr/bin/env python
"""The kernel's warm-up (its tables read in order before the pass) on and off, in one process (issue 15).

Usage: python benchmarks/prior_warm_ab.py RUN_DIR [--threads 1] [--rounds 40]

Three kinds of block of 20 steps (after 3 more), in a shuffled order each round, each from the run's
kept state: the plain step, the retraining step with the warm-up, and without it (SWS_NO_WARM=1,
read by the kernel at every call).  One thread is timed by the thread's CPU time.
"""

import argparse
import contextlib
import os
import statistics
import time

import torch

from prior_parts import alternate_steps, kept_state
from sws.config import retrain_config
from sws.method.loop import adam, retrain_optimizer


def warm_up(on):
    """The kernel's warm-up on or off for a block (SWS_NO_WARM, read at every call)."""
    @contextlib.contextmanager
    def context():
        if on:
            os.environ.pop("SWS_NO_WARM", None)
        else:
            os.environ["SWS_NO_WARM"] = "1"
        yield
    return context


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(args.run_dir)
    cfg = retrain_config("tutorial")
    opt, plain_opt = retrain_optimizer(model, prior, cfg), adam(model.parameters(), 1e-4)
    kinds = {"plain": (None, plain_opt, warm_up(True)), "warm": (prior, opt, warm_up(True)),
             "no warm-up": (prior, opt, warm_up(False))}
    steps, calls = alternate_steps(kinds, model, covered, cfg.tau / 60000, args.rounds, 20, clock)
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

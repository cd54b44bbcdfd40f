#!/usr/bin/env python
"""The tree's C kernel against another build of it, inside retraining steps, in one process (issue 15).

Usage: python benchmarks/kernel_ab.py RUN_DIR --before SO [--after SO2] [--threads 1] [--rounds 40] [--steps 20]

Three kinds of block of STEPS steps (after 3 more), in a shuffled order each round, each from the run's
kept state: the plain step (the engine's Adam), the retraining step on the tree's kernel, and the same
step on the build SO (a copy of the prior with its own workspace and optimiser); with --after, the
build SO2 in place of the tree's.  One thread is timed
by the thread's CPU time, two by the wall clock.  Prints each kind's median step, its ratio to the
plain step of the same round, the prior's call alone inside the step (median), and the paired
difference tree - SO per step of the same round.
"""

import argparse
import contextlib
import copy
import statistics
import time

import torch

from prior_overhead import load_other_kernel, with_kernel
from prior_parts import alternate_steps, kept_state
from sws.config import retrain_config
from sws.method.loop import adam, retrain_optimizer
from sws.prior import kernel as K


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--before", required=True, metavar="SO")
    ap.add_argument("--after", metavar="SO2", help="another build in place of the tree's kernel")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(args.run_dir)
    lib = load_other_kernel(args.before)
    tree_lib = load_other_kernel(args.after) if args.after else K._LIB
    K._LIB = tree_lib
    prior._workspace = K.Workspace()
    prior_b = copy.deepcopy(prior)
    with with_kernel(lib):
        prior_b._workspace = K.Workspace()
    cfg = retrain_config("tutorial")
    kinds = {"plain": (None, adam(model.parameters(), 1e-4), contextlib.nullcontext),
             "tree": (prior, retrain_optimizer(model, prior, cfg), lambda: with_kernel(tree_lib)),
             "before": (prior_b, retrain_optimizer(model, prior_b, cfg), lambda: with_kernel(lib))}
    steps, calls = alternate_steps(kinds, model, covered, cfg.tau / 60000, args.rounds, args.steps, clock)
    with with_kernel(lib):  # its workspace freed by its own library
        lib.sws_free(prior_b._workspace._handle)
        prior_b._workspace._handle = None
    for k in ("tree", "before"):
        r = [a / b for a, b in zip(steps[k], steps["plain"])]
        print(f"{args.threads} threads, {k}: step {1e3 * statistics.median(steps[k]):.3f} ms, ratio "
              f"{statistics.median(r):.3f}, the call {1e6 * statistics.median(calls[k]):.0f} us")
    d = [a - b for a, b in zip(steps["tree"], steps["before"])]
    dc = [a - b for a, b in zip(calls["tree"], calls["before"])]
    print(f"plain step {1e3 * statistics.median(steps['plain']):.3f} ms; tree - before, same round: step "
          f"{1e6 * statistics.median(d):+.0f} us, call {1e6 * statistics.median(dc):+.0f} us ({args.rounds} rounds)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The prior's call after various things, in one process (issue 15, eleventh session).

Usage: python benchmarks/prior_after.py RUN_DIR [--rounds 8] [--threads 1]

On the run's kept state, blocks of 20 calls of the prior (the first 2 of each block not counted) for
each kind, in a shuffled order each round; before every call, untimed: nothing; a forward and backward
pass on the benchmarks' fixed batch ("fb"); that and a first call (the second call's time); a forward
and backward pass and the weights and gradients read back; a forward pass only; 64 MB streamed; a
5 ms sleep; 5 ms of Python spinning.  Prints the median per kind.  One thread is timed by the
thread's CPU time, two by the wall clock.  What it tells apart: what a call loses to the work
around it (the caches it shares, the cores' state), the forward and backward pass being one case.
"""

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from prior_parts import fixed_batch, kept_state


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(args.run_dir)
    x, y = fixed_batch()
    cx = torch.zeros((), dtype=torch.float64)
    big = torch.zeros(16 << 20)

    def call():
        t0 = clock()
        prior.backward_complexity(covered, 1e-9, acc=cx, factor=len(y))
        return clock() - t0

    def fb():
        loss = F.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()

    def spin(seconds):
        t = time.perf_counter() + seconds
        while time.perf_counter() < t:
            pass

    def touch():
        with torch.no_grad():
            for w in covered:
                float(w.sum()) + float(w.grad.sum())

    kinds = {
        "nothing (calls back to back)": call,
        "a forward and backward pass": lambda: (fb(), call())[1],
        "the same, then a first call": lambda: (fb(), call(), call())[2],
        "the same, weights and gradients read back": lambda: (fb(), touch(), call())[2],
        "a forward pass": lambda: (F.cross_entropy(model(x), y), call())[1],
        "64 MB streamed": lambda: (big.add_(1.0), call())[1],
        "5 ms asleep": lambda: (time.sleep(0.005), call())[1],
        "5 ms of Python": lambda: (spin(0.005), call())[1],
    }
    for w in covered:
        w.grad = torch.zeros_like(w)
    res = {k: [] for k in kinds}
    rng = random.Random(0)
    for _ in range(args.rounds):
        for k in rng.sample(list(kinds), len(kinds)):
            ts = [kinds[k]() for _ in range(20)]
            res[k].append(statistics.median(ts[2:]))
    kind = "thread CPU" if args.threads == 1 else "wall"
    print(f"threads {torch.get_num_threads()}, {args.rounds} rounds, clock {kind}")
    for k, v in res.items():
        print(f"| {k} | {statistics.median(v) * 1e6:.0f} us |")


if __name__ == "__main__":
    main()

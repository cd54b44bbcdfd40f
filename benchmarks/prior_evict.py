#!/usr/bin/env python
"""The prior's call alone, after the caches were disturbed in various ways (issue 15, ninth session).

Usage: python benchmarks/prior_evict.py RUN_DIR [--rounds 6]

One thread, the run's kept state; per round, blocks of 40 calls for each kind, timed by the thread's
CPU time (the disturbance before each call is not timed): nothing; a buffer of 2, 4 or 64 MB
streamed through (``evictN``); ``+touch``/``+w``/``+g``: then the weights and gradients, or only one,
read back; ``fb``: a forward and backward pass of the network on the benchmarks' fixed batch.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from prior_parts import fixed_batch, kept_state

KINDS = ("none", "evict2", "evict4", "evict64", "evict64+touch", "evict64+w", "evict64+g", "fb", "fb+touch")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, model, prior, covered, _ = kept_state(args.run_dir)
    for p in covered:
        p.grad = torch.zeros_like(p)
    big = {m: torch.ones(m * 262144) for m in (2, 4, 64)}    # MB of float32
    x, y = fixed_batch()

    def disturb(kind):
        base, _, extra = kind.partition("+")
        if base.startswith("evict"):
            big[int(base[5:])].add_(1.0)
        elif base == "fb":
            F.cross_entropy(model(x), y).backward()
        if extra in ("touch", "w"):
            for p in covered:
                p.detach().sum()
        if extra in ("touch", "g"):
            for p in covered:
                p.grad.sum()

    times = {k: [] for k in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            ts = []
            for _ in range(40):
                disturb(kind)
                t = time.thread_time()
                prior.backward_complexity(covered, 1e-7)
                ts.append(time.thread_time() - t)
            times[kind].append(statistics.median(ts))
    for kind in KINDS:
        print(f"{kind:14s} {1e6 * statistics.median(times[kind]):7.0f} us")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The prior's call after ``backward()`` against from the gradient hook of the last covered
tensor to get its gradient, alternated in one process on a run's kept state (issue 15).

Usage: python benchmarks/prior_hook.py RUN_DIR [--threads 1] [--blocks 24]

Each block starts from the kept state and runs 30 steps (forward, backward, the prior's call,
Adam at lr 1e-4 on one fixed random batch); the call alone is timed (one thread: the thread's
CPU time; more: the wall clock).
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
    ap.add_argument("--blocks", type=int, default=24)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(args.run_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = adam(model.parameters(), 1e-4)
    x, y = fixed_batch()
    scale, mode, seen, times = 0.003 / 60000, ["after"], [0], []

    def timed_call():
        t = clock()
        prior.backward_complexity(covered, scale)
        times.append(clock() - t)

    def hook(p):
        seen[0] += 1
        if mode[0] == "hook" and seen[0] == len(covered):
            timed_call()
    for p in covered:
        p.register_post_accumulate_grad_hook(hook)
    res = {"after": [], "hook": []}
    for b in range(args.blocks):
        mode[0] = ("after", "hook")[b % 2]
        model.load_state_dict(state)
        times.clear()
        for _ in range(30):
            seen[0] = 0
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if mode[0] == "after":
                timed_call()
            opt.step()
        res[mode[0]].append(statistics.median(times))
    print(", ".join(f"{m}: {1e6 * statistics.median(v):.0f} us a call" for m, v in res.items()))


if __name__ == "__main__":
    main()

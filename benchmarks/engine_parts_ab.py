#!/usr/bin/env python
"""The prior's call and the four-group Adam step inside a retraining step, now against 9a7dcea (ninth session).

Usage: python benchmarks/engine_parts_ab.py RUN_DIR --before-so k_9a7dcea.so [--rounds 30]

As ``engine_step_ab.py`` (same old path, same kept state, one thread, CPU time), but timing the parts
of each step: per round, 20 steps old and 20 new in a random order; medians of the forward and backward
pass, the prior's call (with the running sum of C) and the optimiser's step.
"""

import argparse
import copy
import random
import statistics
import time

import torch
import torch.nn.functional as F

from engine_step_ab import groups, old_lib, old_prior_backward
from prior_overhead import with_kernel
from prior_parts import fixed_batch, kept_state
from sws.config import retrain_config
from sws.method.adam import Adam
from sws.prior import kernel as K


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--before-so", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    clock = time.thread_time
    _, model, prior, covered, _ = kept_state(args.run_dir)
    x, y = fixed_batch()
    cfg = retrain_config("tutorial")
    scale = cfg.tau / 60000
    lib = old_lib(args.before_so)
    ctx = with_kernel(lib)
    prior_old = copy.deepcopy(prior)
    prior_old._workspace = K.Workspace()
    opts = {"old": torch.optim.Adam(groups(model, prior_old, cfg), fused=True), "new": Adam(groups(model, prior, cfg))}
    cx = torch.zeros((), dtype=torch.float64)
    res = {f"{part} {age}": [] for part in ("forward and backward", "prior", "adam") for age in ("old", "new")}
    rng = random.Random(0)
    for _ in range(args.rounds):
        for age in rng.sample(["old", "new"], 2):
            opt = opts[age]
            for _ in range(20):
                t0 = clock()
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t1 = clock()
                if age == "old":
                    with ctx:
                        c = old_prior_backward(prior_old, covered, scale, lib)
                    cx.add_(c * len(y))
                else:
                    prior.backward_complexity(covered, scale, acc=cx, factor=len(y))
                t2 = clock()
                opt.step()
                t3 = clock()
                res[f"forward and backward {age}"].append(t1 - t0)
                res[f"prior {age}"].append(t2 - t1)
                res[f"adam {age}"].append(t3 - t2)
    for k, v in res.items():
        print(f"{k}: {1e6 * statistics.median(v):.0f} us")


if __name__ == "__main__":
    main()

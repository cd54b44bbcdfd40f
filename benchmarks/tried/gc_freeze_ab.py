#!/usr/bin/env python
"""Python's garbage collector frozen or not, plain and retraining steps (issue 15, tenth session; not kept).

Usage: python benchmarks/tried/gc_freeze_ab.py RUN_DIR

One thread, CPU time; 30 rounds of four shuffled blocks of 40 steps from the run's kept state: the plain
step and the retraining step, each with the collector as it is and after ``gc.freeze()``.
"""

import gc
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from prior_parts import fixed_batch, kept_state  # noqa: E402
from sws.config import retrain_config  # noqa: E402
from sws.method.loop import adam, retrain_optimizer  # noqa: E402


def main():
    torch.set_num_threads(1)
    _, model, prior, covered, _ = kept_state(sys.argv[1])
    x, y = fixed_batch()
    cfg = retrain_config("tutorial")
    opt, popt = retrain_optimizer(model, prior, cfg), adam(model.parameters(), 1e-4)
    cx = torch.zeros((), dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    res = {}
    rng = random.Random(0)
    kinds = [(p, f) for p in ("plain", "prior") for f in ("gc", "frozen")]
    for _ in range(30):
        for kind in rng.sample(kinds, 4):
            model.load_state_dict(state)
            prior.load_state_dict(pstate)
            if kind[1] == "frozen":
                gc.freeze()
            else:
                gc.unfreeze()
            o = popt if kind[0] == "plain" else opt
            t0 = time.thread_time()
            for _ in range(40):
                loss = F.cross_entropy(model(x), y)
                o.zero_grad(set_to_none=True)
                loss.backward()
                if kind[0] == "prior":
                    prior.backward_complexity(covered, cfg.tau / 60000, acc=cx, factor=256)
                o.step()
            res.setdefault(kind, []).append((time.thread_time() - t0) / 40)
    gc.unfreeze()
    for k, v in res.items():
        print(k, "%.3f ms" % (1e3 * statistics.median(v)))
    for f in ("gc", "frozen"):
        print(f, "ratio %.3f" % statistics.median([a / b for a, b in zip(res[("prior", f)], res[("plain", f)])]))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Retraining steps in a loop on a run's kept state, for a sampling profiler (issue 15, tenth session).

Usage: OMP_NUM_THREADS=1 perf record -e cpu-clock -F 20000 -D 4000 -o perf.data \
           python benchmarks/tried/prior_step_loop.py RUN_DIR 120
       perf report -i perf.data --sort dso,sym --stdio

ROUNDS rounds of 23 steps (forward, backward, the prior's call, the four-group Adam) on one thread,
each round from the kept state again.  ``-e cpu-clock`` samples by the kernel's timer where the
machine has no hardware counters; ``-D`` leaves out the start-up.
"""

import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from prior_parts import fixed_batch, kept_state  # noqa: E402
from sws.config import retrain_config  # noqa: E402
from sws.method.loop import retrain_optimizer  # noqa: E402


def main():
    torch.set_num_threads(1)
    _, model, prior, covered, _ = kept_state(sys.argv[1])
    x, y = fixed_batch()
    cfg = retrain_config("tutorial")
    opt = retrain_optimizer(model, prior, cfg)
    cx = torch.zeros((), dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    for _ in range(int(sys.argv[2])):
        model.load_state_dict(state)
        prior.load_state_dict(pstate)
        for _ in range(23):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            prior.backward_complexity(covered, cfg.tau / 60000, acc=cx, factor=256)
            opt.step()


if __name__ == "__main__":
    main()

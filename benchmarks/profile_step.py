"""Retraining steps in a loop, to profile (``perf record``): a finished run's kept state, batch 256.

Usage: python benchmarks/profile_step.py RUN_DIR THREADS WITH_PRIOR(0|1) STEPS
Prints the mean step time; run it under ``perf record`` to see where a step goes.
"""

import sys
import time

import torch
import torch.nn.functional as F

from sws.config import retrain_config
from sws.method.loop import retrain_optimizer
from sws.runs.inputs import covered_of, model_from_checkpoint, prior_from_checkpoint
from sws.runs.rundir import RunDir


def main():
    run_dir, threads, with_prior, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
    torch.set_num_threads(threads)
    tensors, meta = RunDir.open(run_dir).load("retrained")
    model, prior = model_from_checkpoint(tensors, meta), prior_from_checkpoint(tensors, meta)
    covered = list(covered_of(model, meta["retrain"]["prior"]).values())
    opt = retrain_optimizer(model, prior, retrain_config("tutorial"))
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if with_prior:
            prior.backward_complexity(covered, 1e-7)
        opt.step()

    for _ in range(20):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    print(f"{(time.perf_counter() - t0) / steps * 1e3:.3f} ms a step")


if __name__ == "__main__":
    main()

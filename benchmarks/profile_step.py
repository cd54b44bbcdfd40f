"""Retraining steps in a loop, to profile (``perf record``): a finished run's kept state, batch 256.

Usage: python benchmarks/profile_step.py RUN_DIR THREADS WITH_PRIOR(0|1) STEPS
Prints the mean step time; run it under ``perf record`` to see where a step goes.
"""

import sys
import time
from pathlib import Path

import torch

from sws.config import retrain_config
from sws.method.loop import retrain_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from prior_parts import kept_state  # noqa: E402


def main():
    run_dir, threads, with_prior, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
    torch.set_num_threads(threads)
    _, model, prior, _, one_step = kept_state(run_dir)
    opt = retrain_optimizer(model, prior, retrain_config("tutorial"))
    for _ in range(20):
        one_step(opt, with_prior)
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step(opt, with_prior)
    print(f"{(time.perf_counter() - t0) / steps * 1e3:.3f} ms a step")


if __name__ == "__main__":
    main()

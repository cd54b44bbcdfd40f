#!/usr/bin/env python
"""The prior's call alone, repeated on a run's kept state (issue 15): ``perf record`` it to see
where the kernel's time goes.

Usage: python benchmarks/prior_call.py RUN_DIR [--threads 1] [--calls 500]
       perf record -o perf.data python benchmarks/prior_call.py RUN_DIR --calls 12000
"""

import argparse
import time

import torch

from prior_parts import kept_state


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, _, prior, covered, _ = kept_state(args.run_dir)
    for p in covered:
        p.grad = torch.zeros_like(p)
    for _ in range(50):
        prior.backward_complexity(covered, 1e-7)
    t0 = time.perf_counter()
    for _ in range(args.calls):
        prior.backward_complexity(covered, 1e-7)
    print(f"{1e6 * (time.perf_counter() - t0) / args.calls:.0f} us a call ({args.calls} calls, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()

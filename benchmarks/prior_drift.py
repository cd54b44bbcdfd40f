#!/usr/bin/env python
"""How much the prior's call costs on a run's kept state and on that state after the steps of
the step benchmarks (issue 15): those train on one fixed batch of random images and labels,
which moves every weight away from its component.

Usage: python benchmarks/prior_drift.py RUN_DIR [--threads 1] [--steps 240] [--blocks 16]

Prints the share of weights within 0.01 of zero before and after, and the median time of the
prior's call (``backward_complexity``) on each, in alternating blocks of 30 calls.
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
    ap.add_argument("--steps", type=int, default=240, help="steps of the benchmarks' kind (lr 1e-4)")
    ap.add_argument("--blocks", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, model, prior, covered, _ = kept_state(args.run_dir)
    end = [p.detach().clone() for p in covered]
    opt = adam(model.parameters(), 1e-4)
    x, y = fixed_batch()
    for _ in range(args.steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        prior.backward_complexity(covered, 0.003 / 60000)
        opt.step()
    drift = [p.detach().clone() for p in covered]
    for w in end + drift:
        w.grad = torch.zeros_like(w)

    def near(ws):
        return sum(int((w.abs() < 0.01).sum()) for w in ws) / sum(w.numel() for w in ws)
    print(f"share of weights within 0.01 of zero: kept state {near(end):.4f}, after {args.steps} steps "
          f"{near(drift):.4f}")
    times = {"kept state": [], "drifted": []}
    for _ in range(args.blocks):
        for name, ws in (("kept state", end), ("drifted", drift)):
            t0 = time.perf_counter()
            for _ in range(30):
                prior.backward_complexity(ws, 1e-7)
            times[name].append((time.perf_counter() - t0) / 30)
    print(", ".join(f"{k}: {1e6 * statistics.median(v):.0f} us a call" for k, v in times.items()))


if __name__ == "__main__":
    main()

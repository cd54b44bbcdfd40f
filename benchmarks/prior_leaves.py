#!/usr/bin/env python
"""Where a run's kept weights lie among the kernel's leaves (issue 15, tenth session).

Usage: python benchmarks/prior_leaves.py RUN_DIR

After 9 calls of the prior on the run's kept state (a plan and its refinement), each weight's leaf
from the saved geometry: the leaves holding the most weights and their shares, the share of the
best window of 2, 4, 8 and 16 consecutive leaves (the hot path takes a window of 2), and how many
leaves hold weights (each is built at every call).
"""

import argparse

import numpy as np
import torch

from prior_parts import kept_state


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, _, prior, covered, _ = kept_state(args.run_dir)
    for p in covered:
        p.grad = torch.zeros_like(p)
    for _ in range(9):
        prior.backward_complexity(covered, 1e-7)
    s = prior._workspace.state_dict()
    L, D = s["L"], s["D"]
    start = s["ptr"].numpy()[:L + 1]
    hf = s["grid_h"] / 2 ** D
    flo = s["grid_lo"] - hf
    w = torch.cat([p.detach().flatten() for p in covered]).double().numpy()
    f = np.floor((w - flo) / hf).astype(np.int64)          # the fine cell, 1-based as in the kernel
    leaf = np.searchsorted(start, f, side="right") - 1
    cnt = np.bincount(leaf[(leaf >= 0) & (leaf < L)], minlength=L)
    total = len(w)
    top = np.argsort(-cnt)[:8]
    print(f"{total} weights, {L} leaves, {(cnt > 0).sum()} holding weights; the fullest leaves: "
          + ", ".join(f"{int(q)} {cnt[q] / total:.3f}" for q in top))
    for width in (2, 4, 8, 16):
        best = max(cnt[i:i + width].sum() for i in range(L - width + 1))
        print(f"best window of {width} leaves: {best / total:.3f} of the weights")


if __name__ == "__main__":
    main()

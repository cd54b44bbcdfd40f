#!/usr/bin/env python
"""Two builds of the C kernel, the same calls: every output bit compared (issue 15, tenth session).

Usage: python benchmarks/prior_bits_ab.py RUN_DIR SO_A SO_B [--threads 1]

From the run's kept state, 30 calls of the prior on each build (each on a copy of the prior with a
workspace of its own), the weights and the mixture moving between calls as in training: the sha256
of every call's C, the weights' gradients and the mixture's gradients, and the leaves the last call
built.  "SAME" where the two digests agree.
"""

import argparse
import copy
import hashlib

import torch

from prior_overhead import load_other_kernel, with_kernel
from prior_parts import kept_state
from sws.prior import kernel as K


def digest(prior, covered, so):
    lib = load_other_kernel(so)
    with with_kernel(lib):
        p = copy.deepcopy(prior)
        p._workspace = K.Workspace()
        ws = [w.detach().clone() for w in covered]
        h = hashlib.sha256()
        for _ in range(30):
            for t in ws + list(p.parameters()):
                t.grad = None
            c = p.backward_complexity(ws, 1e-3)
            with torch.no_grad():             # a step, as training moves them
                for w in ws:
                    w.add_(w.grad, alpha=-1e-3)
                for q in p.parameters():
                    q.add_(q.grad, alpha=-1e-4)
            h.update(repr(float(c)).encode())
            for t in ws + list(p.parameters()):
                h.update(t.grad.numpy().tobytes())
        built = p._workspace.n_built
        lib.sws_free(p._workspace._handle)
        p._workspace._handle = None
    return h.hexdigest(), built


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("so_a")
    ap.add_argument("so_b")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, _, prior, covered, _ = kept_state(args.run_dir)
    a, b = digest(prior, covered, args.so_a), digest(prior, covered, args.so_b)
    print(f"{args.threads} threads: {a[0][:16]} ({a[1]} leaves built) / {b[0][:16]} ({b[1]} leaves built): "
          + ("SAME" if a[0] == b[0] else "DIFFERENT"))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The snap phase's swap now against an older kernel's, in one process (issue 15, ninth session).

Usage: python benchmarks/snap_swap_ab.py RUN_DIR OLD_KERNEL.so [--threads 1] [--rounds 30]

After a forward and backward pass (the weights and tables out of the caches, as in a step), the
time of the snap table, the swap of every covered tensor to its snapped values and the swap back:
"new" is ``Snap.applied()`` (the AVX-512 swap where the CPU has it, the buffers reused from block to
block), "old" the same table with OLD_KERNEL.so's ``sws_snap`` and fresh buffers per block, as
before.  Blocks of 20 in a shuffled order per round; one thread timed by the thread's CPU time.
"""

import argparse
import ctypes
import random
import statistics
import time

import torch
import torch.nn.functional as F

from prior_parts import fixed_batch, kept_state
from sws.method.snap import Snap


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("old_kernel")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(args.run_dir)
    x, y = fixed_batch()
    old = ctypes.CDLL(args.old_kernel)
    vp = ctypes.c_void_p
    old.sws_snap.restype, old.sws_snap.argtypes = None, [vp, vp, ctypes.c_int64, vp, ctypes.c_int, vp]
    snap = Snap(prior, covered, 1e-2)

    def old_block():
        edges, values = snap.table()
        e, v = edges.float().contiguous(), values.float().contiguous()
        with torch.no_grad():
            saved = [torch.empty_like(p) for p in covered]
            for p, s in zip(covered, saved):
                old.sws_snap(p.data_ptr(), s.data_ptr(), p.numel(), e.data_ptr(), e.numel(), v.data_ptr())
            for p, s in zip(covered, saved):
                p.copy_(s)

    def new_block():
        with snap.applied():
            pass

    kinds = {"old": old_block, "new": new_block}
    times = {k: [] for k in kinds}
    rng = random.Random(0)
    for _ in range(args.rounds):
        for kind in rng.sample(list(kinds), 2):
            ts = []
            for _ in range(20):
                loss = F.cross_entropy(model(x), y)
                model.zero_grad(set_to_none=True)
                loss.backward()
                t0 = clock()
                kinds[kind]()
                ts.append(clock() - t0)
            times[kind].append(statistics.median(ts))
    for kind, v in times.items():
        print(f"{args.threads} threads, {kind}: the table, the swap and back after a forward and backward pass "
              f"{1e6 * statistics.median(v):.0f} us")


if __name__ == "__main__":
    main()

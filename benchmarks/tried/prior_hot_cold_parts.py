#!/usr/bin/env python
"""The parts of the prior's call, alone and inside a step, from a build with rdtsc counters (ninth session).

Apply ``benchmarks/tried/prior_timing_counters.patch`` to 9a7dcea's ``src/sws/prior/_kernel.c``, build
(``python setup.py build_ext --inplace``), then, from ``benchmarks/``:

    python tried/prior_hot_cold_parts.py RUN_DIR [--ghz 2.596]

One thread, the run's kept state, 200 calls per kind (alone, after a forward and backward pass), two
series: the hot window's vector loop, the other weights' scalar step (and their number), the NaN fixes
(leaf builds, exact weights), the gradients into ``.grad``.  --ghz: the time-stamp counter's rate.
"""

import argparse
import ctypes
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from prior_parts import fixed_batch, kept_state  # noqa: E402
from sws.prior import kernel  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--ghz", type=float, default=2.596)
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, model, prior, covered, _ = kept_state(args.run_dir)
    x, y = fixed_batch()
    lib = kernel._LIB
    lib.sws_dbg_times.argtypes, lib.sws_dbg_times.restype = [ctypes.c_void_p], None
    buf = (ctypes.c_double * 8)()
    for kind in ("alone", "in a step", "alone", "in a step"):
        lib.sws_dbg_times(buf)
        n, total = 200, 0.0
        for _ in range(n):
            if kind == "in a step":
                loss = F.cross_entropy(model(x), y)
                model.zero_grad(set_to_none=True)
                loss.backward()
            t = time.perf_counter()
            prior.backward_complexity(covered, 1e-7)
            total += time.perf_counter() - t
        lib.sws_dbg_times(buf)
        us = [c / n / (1e3 * args.ghz) for c in buf]
        cold = buf[5] / n
        print(f"{kind}: call {1e6 * total / n:.0f} us; hot-window loop {us[0]:.0f} us, the other weights "
              f"{us[1]:.0f} us ({cold:.0f} weights, {1e3 * us[1] / cold:.2f} ns each), fixes {us[2]:.0f} us, "
              f"gradients {us[3]:.0f} us")


if __name__ == "__main__":
    main()

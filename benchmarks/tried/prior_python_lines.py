#!/usr/bin/env python
"""9a7dcea's Python path around the prior's C call, timed by its parts, alone and inside a step (ninth session).

Usage (from ``benchmarks/``): python tried/prior_python_lines.py RUN_DIR --before-so k_9a7dcea.so

The same statements as ``benchmarks/engine_step_ab.py``'s ``old_prior_backward`` (9a7dcea's
``prior_backward`` and ``_prior_backward_c``) with a clock read between them; one thread, 200 calls
per kind (alone; after a forward and backward pass), two series; medians in us.
"""

import argparse
import ctypes
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from engine_step_ab import old_lib  # noqa: E402
from prior_overhead import with_kernel  # noqa: E402
from prior_parts import fixed_batch, kept_state  # noqa: E402
from sws.prior import kernel as K  # noqa: E402

NAMES = ("tensors_of", "weights' loop", "p_grads", "c_takes", "ctypes arrays", "arguments", "C", "ws update",
         "scalar_tensor")


def timed_call(prior, weights, scale, lib, T):
    pc = time.perf_counter
    T.append(pc())
    means, log_precisions, mixing_logits, pi0_logit, alpha, beta = K._tensors_of(prior)
    params = [means, log_precisions, mixing_logits]
    learn_pi0 = isinstance(pi0_logit, torch.nn.Parameter)
    J = log_precisions.numel()
    T.append(pc())
    w_ptrs, g_ptrs = [], []
    for w in weights:
        g = w.grad
        if w.is_cpu and w.dtype is K._F32 and g.dtype is K._F32 and w.is_contiguous() and g.is_contiguous():
            w_ptrs.append(w.data_ptr())
            g_ptrs.append(g.data_ptr())
    T.append(pc())
    p_grads = [(p.grad if p.grad is not None else K._ensure_grad(p)) if p.requires_grad else None for p in params]
    T.append(pc())
    assert K._c_takes(params) and K._c_takes((alpha, beta)) and K._c_takes(g for g in p_grads if g is not None)
    T.append(pc())
    nt = len(weights)
    ptrs = ((K._vp * nt)(*w_ptrs), (ctypes.c_int64 * nt)(*[w.numel() for w in weights]), (K._vp * nt)(*g_ptrs))
    T.append(pc())
    ws = prior._workspace
    buf = ws.mixture_buffers(J)
    plan = ws.calls % ws.SETS_EVERY == 0 or ws.J != J
    ws.calls += 1
    cfg, info = prior.config, ws.info
    args = (ws.handle(), J, params[0].data_ptr(), params[1].data_ptr(), params[2].data_ptr(),
            pi0_logit.data_ptr(), int(learn_pi0), float(cfg.pi0_a), float(cfg.pi0_b),
            alpha.data_ptr(), beta.data_ptr(), len(weights), ptrs[0], ptrs[1], ptrs[2],
            scale, K._threads(), K._MIN_PARALLEL, int(plan), ws.lo, ws.hi, K._CUT + ws.SETS_MARGIN,
            *[g.data_ptr() if g is not None else None for g in p_grads],
            *([None] if len(p_grads) == 3 else []), buf.data_ptr(), ws.out.data_ptr(), info)
    T.append(pc())
    C = lib.sws_step(*args)
    T.append(pc())
    ws.J = J
    ws.n_exact += int(info[0])
    ws.n_seen += sum(ptrs[1])
    ws.n_built = int(info[3])
    lo, hi = info[1], info[2]
    if lo - lo == 0.0 and hi - hi == 0.0:
        ws.lo, ws.hi = lo, hi
    T.append(pc())
    r = torch.scalar_tensor(C, dtype=torch.float64)
    T.append(pc())
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--before-so", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, model, prior, covered, _ = kept_state(args.run_dir)
    x, y = fixed_batch()
    lib = old_lib(args.before_so)
    prior._workspace = K.Workspace()
    for p in covered:
        p.grad = torch.zeros_like(p)
    with with_kernel(lib):
        for kind in ("alone", "in a step", "alone", "in a step"):
            rows = []
            for _ in range(200):
                if kind == "in a step":
                    loss = F.cross_entropy(model(x), y)
                    model.zero_grad(set_to_none=True)
                    loss.backward()
                T = []
                timed_call(prior, covered, 1e-7, lib, T)
                rows.append([T[k + 1] - T[k] for k in range(len(T) - 1)])
            print(kind + ": " + ", ".join(f"{n} {1e6 * statistics.median(r[k] for r in rows):.1f}"
                                          for k, n in enumerate(NAMES)))


if __name__ == "__main__":
    main()

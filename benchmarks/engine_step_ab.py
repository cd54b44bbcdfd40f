#!/usr/bin/env python
"""The engine's retraining step now against as of 9a7dcea, in one process (issue 15, ninth session).

Usage: python benchmarks/engine_step_ab.py RUN_DIR --before-so OLD.so [--threads 1] [--blocks 16]

What changed around the kernel: ``sws.method.adam.Adam`` (torch's fused Adam whose step keeps its
per-group lists and calls the kernel directly) instead of ``torch.optim.Adam(fused=True)``; the
prior's Python path bound once to its tensors (``sws.prior.kernel._Binding``); the loop's running
sum of C added in C (``acc=``) instead of three tensor operations.  OLD.so is 9a7dcea's
``_kernel.c`` built as the README says for ``--before`` (``gcc -O2 -fno-math-errno
-ffp-contract=off -shared -fPIC ...``); the old Python path below is 9a7dcea's, verbatim but for
its library.  Four kinds of block, in a shuffled order in each round, each from the run's kept state: the plain step
(cross-entropy, Adam) and the retraining step (the same, the prior's gradient, the four-group
Adam and the running sum of C), each old and new.  One thread is timed by the thread's CPU time.
"""

import argparse
import copy
import ctypes
import random
import statistics
import time

import torch
import torch.nn.functional as F

from prior_overhead import with_kernel
from prior_parts import fixed_batch, kept_state
from sws.config import retrain_config
from sws.method.adam import Adam
from sws.prior import kernel as K


def old_lib(path):
    lib = ctypes.CDLL(path)
    vp, ci, cd = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    lib.sws_new.restype, lib.sws_new.argtypes = vp, []
    lib.sws_free.restype, lib.sws_free.argtypes = None, [vp]
    lib.sws_step.restype = cd
    lib.sws_step.argtypes = [vp, ci, vp, vp, vp, vp, ci, cd, cd, vp, vp, ci, vp, vp, vp, ctypes.c_float, ci,
                             ctypes.c_int64, ci, cd, cd, cd, vp, vp, vp, vp, vp, vp, vp]
    return lib


def old_prior_backward(prior, weights, scale, lib):
    """9a7dcea's ``prior_backward`` (its C branch) and ``_prior_backward_c``."""
    means, log_precisions, mixing_logits, pi0_logit, alpha, beta = K._tensors_of(prior)
    params = [means, log_precisions, mixing_logits]
    learn_pi0 = isinstance(pi0_logit, torch.nn.Parameter)
    if learn_pi0:
        params.append(pi0_logit)
    J = log_precisions.numel()
    w_ptrs, g_ptrs = [], []
    for w in weights:
        g = w.grad
        if g is None:
            g = w.grad = torch.zeros_like(w)
        if w.is_cpu and w.dtype is K._F32 and g.dtype is K._F32 and w.is_contiguous() and g.is_contiguous():
            w_ptrs.append(w.data_ptr())
            g_ptrs.append(g.data_ptr())
    p_grads = [(p.grad if p.grad is not None else K._ensure_grad(p)) if p.requires_grad else None for p in params]
    assert K._c_takes(params) and K._c_takes((alpha, beta)) and K._c_takes(g for g in p_grads if g is not None)
    nt = len(weights)
    ptrs = ((K._vp * nt)(*w_ptrs), (ctypes.c_int64 * nt)(*[w.numel() for w in weights]), (K._vp * nt)(*g_ptrs))
    ws = prior._workspace
    buf = ws.mixture_buffers(J)
    plan = ws.calls % ws.SETS_EVERY == 0 or ws.J != J
    ws.calls += 1
    cfg, info = prior.config, ws.info
    C = lib.sws_step(ws.handle(), J, params[0].data_ptr(), params[1].data_ptr(), params[2].data_ptr(),
                     pi0_logit.data_ptr(), int(learn_pi0), float(cfg.pi0_a), float(cfg.pi0_b),
                     alpha.data_ptr(), beta.data_ptr(), len(weights), ptrs[0], ptrs[1], ptrs[2],
                     scale, K._threads(), K._MIN_PARALLEL, int(plan), ws.lo, ws.hi, K._CUT + ws.SETS_MARGIN,
                     *[g.data_ptr() if g is not None else None for g in p_grads],
                     *([None] if len(p_grads) == 3 else []), buf.data_ptr(), ws.out.data_ptr(), info)
    ws.J = J
    ws.n_exact += int(info[0])
    ws.n_seen += sum(ptrs[1])
    ws.n_built = int(info[3])
    lo, hi = info[1], info[2]
    if lo - lo == 0.0 and hi - hi == 0.0:
        ws.lo, ws.hi = lo, hi
    return torch.scalar_tensor(C, dtype=torch.float64)


def groups(model, prior, cfg):
    return [{"params": list(model.parameters()), "lr": cfg.lr_weights}, {"params": [prior.means], "lr": cfg.lr_means},
            {"params": [prior.log_precisions], "lr": cfg.lr_log_precisions},
            {"params": [prior.mixing_logits], "lr": cfg.lr_mixing}]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--before-so", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(args.run_dir)
    x, y = fixed_batch()
    cfg = retrain_config("tutorial")
    scale = cfg.tau / 60000
    lib_old = old_lib(args.before_so)
    ctx_old = with_kernel(lib_old)                            # its workspace from its own library
    prior_old = copy.deepcopy(prior)
    prior_old._workspace = K.Workspace()
    plain_old = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    plain_new = Adam(model.parameters(), lr=1e-4)
    opt_old = torch.optim.Adam(groups(model, prior_old, cfg), fused=True)
    opt_new = Adam(groups(model, prior, cfg))
    cx = torch.zeros((), dtype=torch.float64)

    def plain(opt):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def retrain_old():
        loss = F.cross_entropy(model(x), y)
        opt_old.zero_grad(set_to_none=True)
        loss.backward()
        with ctx_old:
            c = old_prior_backward(prior_old, covered, scale, lib_old)
        cx.add_(c * len(y))                                      # the loop's cx_sum += complexity * len(y)
        opt_old.step()

    def retrain_new():
        loss = F.cross_entropy(model(x), y)
        opt_new.zero_grad(set_to_none=True)
        loss.backward()
        prior.backward_complexity(covered, scale, acc=cx, factor=len(y))
        opt_new.step()

    kinds = {"plain, old": lambda: plain(plain_old), "plain, new": lambda: plain(plain_new),
             "retraining, old": retrain_old, "retraining, new": retrain_new}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    times = {k: [] for k in kinds}
    order = list(kinds)
    rng = random.Random(0)
    for _ in range(args.blocks):
        rng.shuffle(order)                  # no kind always follows another
        for name in order:
            fn = kinds[name]
            model.load_state_dict(state)
            prior.load_state_dict(pstate)
            prior_old.load_state_dict(pstate)
            for _ in range(3):
                fn()
            t = clock()
            for _ in range(args.steps):
                fn()
            times[name].append((clock() - t) / args.steps)
    for age in ("old", "new"):
        ratios = [b / a for a, b in zip(times[f"plain, {age}"], times[f"retraining, {age}"])]
        print(f"{age}: plain step {1e3 * statistics.median(times[f'plain, {age}']):.3f} ms, retraining step "
              f"{1e3 * statistics.median(times[f'retraining, {age}']):.3f} ms, ratio {statistics.median(ratios):.3f}")
    for kind in ("plain", "retraining"):
        diff = [b - a for a, b in zip(times[f"{kind}, old"], times[f"{kind}, new"])]
        print(f"{kind} step, new - old in the same block: median {1e3 * statistics.median(diff):+.3f} ms")
    print(f"({args.threads} threads, {args.blocks} blocks of {args.steps} steps in shuffled order, medians)")


if __name__ == "__main__":
    main()

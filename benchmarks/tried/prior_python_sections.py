#!/usr/bin/env python
"""The Python path around the kernel's ctypes call, by its sections, inside retraining steps (tenth session).

Usage: python benchmarks/tried/prior_python_sections.py RUN_DIR

One thread, the run's kept state, 300 steps (forward, backward, the call, Adam): the medians of the
sections of ``kernel._prior_backward_c`` as it was before ``_kernel.train_step`` took the training
loop's call (this is a timed copy of that path, frozen; it is still the path of a call that
train_step hands back).
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from prior_parts import fixed_batch, kept_state  # noqa: E402
from sws.config import retrain_config  # noqa: E402
from sws.method.loop import retrain_optimizer  # noqa: E402
from sws.prior import kernel as K  # noqa: E402
pc = time.perf_counter
T = {}


def body(prior, weights, scale, acc, factor):
    t0 = pc()
    tensors = K._tensors_of(prior)
    t1 = pc()
    ws = prior._workspace
    b = ws.binding
    if b is None or not b.fits(tensors, weights):
        b = ws.binding = K._Binding.make(prior, tensors, weights)
    t2 = pc()
    g_arr = b.g_arr
    for i, w in enumerate(weights):
        g = w.grad
        if g is None:
            g = w.grad = torch.zeros_like(w)
        elif not g.is_contiguous():
            return None
        g_arr[i] = g.data_ptr()
    t3 = pc()
    pg, setting = [None, None, None, None], 0
    for q, (p, wanted) in enumerate(b.learn):
        if wanted:
            g = pg[q] = p.grad
            if g is not None and g is not b.grads[q] and not g.is_contiguous():
                return None
    for q, (p, wanted) in enumerate(b.learn):
        if wanted:
            if pg[q] is None:
                pg[q] = p.grad = b.grads[q]
                setting |= 1 << q
            pg[q] = pg[q].data_ptr()
    acc_ptr = None
    if acc is not None:
        if acc is not b.acc:
            b.acc = acc
            b.acc_ptr = acc.data_ptr() if (acc.is_cpu and acc.dtype is torch.float64 and acc.numel() == 1) else None
        acc_ptr = b.acc_ptr
    plan = ws.calls % ws.SETS_EVERY == 0 or ws.J != b.J
    ws.calls += 1
    cfg, info, ptrs = prior.config, ws.info, b.ptrs
    t4 = pc()
    C = K._LIB.sws_train_step(ws.handle(), b.J, ptrs[0], ptrs[1], ptrs[2], ptrs[3], b.learn_pi0,
                            float(cfg.pi0_a), float(cfg.pi0_b), ptrs[4], ptrs[5], b.nt, b.w_arr, b.n_arr,
                            g_arr, scale, K._threads(), K._MIN_PARALLEL, plan, ws.lo, ws.hi,
                            K._CUT + ws.SETS_MARGIN, pg[0], pg[1], pg[2], pg[3], setting,
                            b.mix.data_ptr(), b.out.data_ptr(), info, acc_ptr, factor)
    t5 = pc()
    if info[4] != 0:
        raise MemoryError("the prior's C kernel ran out of memory planning its grid")
    ws.J = b.J
    ws.n_exact += int(info[0])
    ws.n_seen += b.n_total
    ws.n_built = int(info[3])
    lo, hi = info[1], info[2]
    if lo - lo == 0.0 and hi - hi == 0.0:
        ws.lo, ws.hi = lo, hi
    t6 = pc()
    for k, v in (("tensors_of", t1 - t0), ("fits", t2 - t1), ("wgrads", t3 - t2), ("pgrads+acc", t4 - t3),
                 ("ctypes+C", t5 - t4), ("after", t6 - t5)):
        T.setdefault(k, []).append(v * 1e6)
    return C


def main():
    torch.set_num_threads(1)
    _, model, prior, covered, _ = kept_state(sys.argv[1])
    x, y = fixed_batch()
    cfg = retrain_config("tutorial")
    opt = retrain_optimizer(model, prior, cfg)
    cx = torch.zeros((), dtype=torch.float64)
    scale = cfg.tau / 60000
    for p in covered:
        p.grad = torch.zeros_like(p)
    body(prior, covered, scale, cx, 256)
    T.clear()
    for _ in range(300):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t = pc()
        body(prior, covered, scale, cx, 256)
        T.setdefault("total", []).append((pc() - t) * 1e6)
        opt.step()
    for k, v in T.items():
        print(k, "%.1f us" % statistics.median(v))


if __name__ == "__main__":
    main()

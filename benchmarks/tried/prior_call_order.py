"""Tried in issue 15 and not kept: the prior's call before the forward pass (right after the last
step's Adam, the weights in cache) instead of after backward().

Usage: python benchmarks/tried/prior_call_order.py RUN_DIR [THREADS] [BLOCKS].  Kinds, alternated
in blocks of 30 steps from the run's kept state: plain; "after" (the engine's order);
"before_zero" (gradients zeroed, the prior's call, forward, backward accumulating onto it);
"before_stale" (the same without zeroing: the memory traffic of a prior that writes rather than
adds its gradient; the values are wrong, for timing only).  One thread is timed by CPU time.
"""

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prior_parts import fixed_batch, kept_state  # noqa: E402
from sws.config import retrain_config  # noqa: E402
from sws.method.loop import retrain_optimizer  # noqa: E402


def main():
    run_dir = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    blocks = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(run_dir)
    opt = retrain_optimizer(model, prior, retrain_config("tutorial"))
    x, y = fixed_batch()
    scale = 0.003 / 60000

    def plain():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def after():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        prior.backward_complexity(covered, scale)
        opt.step()

    def before_zero():
        opt.zero_grad(set_to_none=False)
        prior.backward_complexity(covered, scale)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def before_stale():
        for p in covered:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        prior.backward_complexity(covered, scale)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    kinds = {"plain": plain, "after": after, "before_zero": before_zero, "before_stale": before_stale}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    times = {k: [] for k in kinds}
    for _ in range(blocks):
        for name, step in kinds.items():
            model.load_state_dict(state)
            prior.load_state_dict(pstate)
            opt.state.clear()
            for p in model.parameters():
                p.grad = None
            step()
            step()
            t = clock()
            for _ in range(30):
                step()
            times[name].append((clock() - t) / 30 * 1e3)
    base = statistics.median(times["plain"])
    for name, t in times.items():
        print(f"threads {threads} {name}: {statistics.median(t):.3f} ms, ratio {statistics.median(t) / base:.3f}")


if __name__ == "__main__":
    main()

"""Tried in issue 15 and not kept: the covered weights' Adam update inside the prior's C pass.

Step time, alternated in blocks of 30 steps from a run's kept (end) state: a plain step (the
engine's fused Adam), the retraining step as the engine takes it (the prior's call, then Adam)
and the step with the update fused into the prior's pass (``prior_adam_fused.patch``:
``sws.method.prior_step.PriorStep``).  One thread is timed by CPU time.

Usage, on a tree with the patch applied and built:
  git apply benchmarks/tried/prior_adam_fused.patch && python setup.py -q build_ext --inplace
  python benchmarks/tried/prior_adam_fused_step.py RUN_DIR THREADS [BLOCKS]
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
from sws.method.loop import adam, retrain_optimizer  # noqa: E402
from sws.method.prior_step import PriorStep  # noqa: E402  (the patch's module)


def main():
    run_dir, threads = sys.argv[1], int(sys.argv[2])
    blocks = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    _, model, prior, covered, _ = kept_state(run_dir)
    opt = retrain_optimizer(model, prior, retrain_config("tutorial"))
    plain_opt = adam(model.parameters(), 5e-4)
    fused_step = PriorStep(opt, prior, covered)
    x, y = fixed_batch()
    scale = 0.003 / 60000

    def plain():
        loss = F.cross_entropy(model(x), y)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def two_calls():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        prior.backward_complexity(covered, scale)
        opt.step()

    def fused():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        fused_step.prior_term(scale)
        fused_step.optimizer_step()

    kinds = {"plain": plain, "two calls": two_calls, "fused": fused}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    times = {k: [] for k in kinds}
    for _ in range(blocks):
        for name, step in kinds.items():
            model.load_state_dict(state)
            prior.load_state_dict(pstate)
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

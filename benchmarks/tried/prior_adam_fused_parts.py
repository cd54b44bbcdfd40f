"""Tried in issue 15 and not kept: the parts of the fused prior + Adam call, each repeated alone.

One thread, thread CPU time, medians of 7 x 100 calls on a run's kept state: the prior's C call,
the four-group Adam step, the C call with the Adam update inside (learning rate 0: the same work,
the weights stay put), the tails torch updates, and the optimiser's step for the rest.

Usage, with ``prior_adam_fused.patch`` applied and built:
  python benchmarks/tried/prior_adam_fused_parts.py RUN_DIR
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prior_parts import kept_state  # noqa: E402
from sws.config import retrain_config  # noqa: E402
from sws.method.loop import retrain_optimizer  # noqa: E402
from sws.method.prior_step import PriorStep  # noqa: E402  (the patch's module)
from sws.prior.kernel import prior_backward  # noqa: E402


def main():
    torch.set_num_threads(1)
    _, model, prior, covered, _ = kept_state(sys.argv[1])
    opt = retrain_optimizer(model, prior, retrain_config("tutorial"))
    step = PriorStep(opt, prior, covered)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()

    def timed(f, n=100):
        runs = []
        for _ in range(7):
            t = time.thread_time()
            for _ in range(n):
                f()
            runs.append((time.thread_time() - t) / n * 1e6)
        return statistics.median(runs)

    ms = [opt.state[p]["exp_avg"] for p in covered]
    vs = [opt.state[p]["exp_avg_sq"] for p in covered]
    steps = [opt.state[p]["step"] for p in covered]
    k = torch.zeros(8 * len(covered), dtype=torch.float64)
    k[1::8], k[2::8], k[4::8] = 1.0, 1e-8, 0.999

    def hidden():
        step._fused = True
        step.optimizer_step()

    print(f"prior call: {timed(lambda: prior.backward_complexity(covered, 1e-9)):.0f} us")
    print(f"Adam step, four groups: {timed(opt.step):.0f} us")
    inside = timed(lambda: prior_backward(prior, covered, 1e-9, adam=(ms, vs, k)))
    print(f"C call with the Adam update (lr 0): {inside:.0f} us")
    tails = timed(lambda: step._tails(step.groups(), ms, vs, steps))
    print(f"tails (torch's fused Adam on the last n % 16): {tails:.0f} us")
    print(f"optimiser step without the covered weights: {timed(hidden):.0f} us")


if __name__ == "__main__":
    main()

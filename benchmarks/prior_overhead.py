"""Cost of the mixture prior in a training step, against a plain step, same model, same process.

Usage:
  python benchmarks/prior_overhead.py RUN_DIR [--steps 40] [--blocks 6] [--threads N] [--no-autograd]
  python benchmarks/prior_overhead.py RUN_DIR --epoch-ratio

RUN_DIR must hold pretrained and retrained checkpoints (any `sws run`).  For
two states of the prior, the start of retraining (pretrained weights, prior as
initialised) and its end (retrained weights and prior), it times steps of
batch 256 on random MNIST-shaped data, alternating blocks of plain steps
(cross-entropy, Adam) and prior steps (cross-entropy, the fused prior gradient,
Adam with the four groups), and prints the median ratio; then a few steps with the straightforward autograd
prior (every weight against every component) for comparison.  Alternating blocks
keeps a noisy shared machine from biasing one side; the load average is printed
with each state.  The "end of retraining" state is whatever the run's retraining
reached: retrain long enough for a sharp mixture (the tutorial's 30 epochs, or
100 for LeNet-300-100).

With --epoch-ratio it times nothing: it reads RUN_DIR/history.json and prints the
median retraining epoch against the median pretraining epoch of that run.
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from sws.config import from_dict, PriorConfig, retrain_config
from sws.prior.kernel import mixture_nll_reference
from sws.method.surface import select_parameters
from sws.runs.stages import model_from_checkpoint, prior_from_checkpoint
from sws.prior import GaussianMixturePrior
from sws.runs.rundir import RunDir
from sws.method.loop import retrain_optimizer


def time_block(fn, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def measure(model, prior, cover, steps, blocks=6, autograd=True):
    cfg = retrain_config("tutorial")
    covered = list(select_parameters(model, cover=cover).values())
    plain_opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    prior_opt = retrain_optimizer(model, prior, cfg)
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    scale = cfg.tau / 60000

    def plain():
        loss = F.cross_entropy(model(x), y)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def with_prior():
        loss = F.cross_entropy(model(x), y)
        prior_opt.zero_grad(set_to_none=True)
        loss.backward()
        prior.backward_complexity(covered, scale)
        prior_opt.step()

    def autograd_prior():  # the straightforward prior: every weight against every component
        loss = F.cross_entropy(model(x), y)
        loss = loss + scale * (mixture_nll_reference(*prior.mixture(), covered) + prior.hyper_prior())
        prior_opt.zero_grad(set_to_none=True)
        loss.backward()
        prior_opt.step()

    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    ratios, plain_ms, prior_ms = [], [], []
    for _ in range(blocks):
        a = time_block(plain, steps)
        b = time_block(with_prior, steps)
        model.load_state_dict(state)  # keep measuring the same state
        prior.load_state_dict(pstate)
        ratios.append(b / a)
        plain_ms.append(a * 1e3)
        prior_ms.append(b * 1e3)
    slow = time_block(autograd_prior, 3) if autograd else float("nan")
    model.load_state_dict(state)
    prior.load_state_dict(pstate)
    return (statistics.median(plain_ms), statistics.median(prior_ms), statistics.median(ratios),
            slow * 1e3)


def epoch_ratio(run_dir):
    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    history = history["history"] if isinstance(history, dict) else history
    sec = {stage: [r["seconds"] for r in history if r.get("stage") == stage] for stage in ("pretrain", "retrain")}
    pre, re = statistics.median(sec["pretrain"]), statistics.median(sec["retrain"])
    mean = statistics.mean(sec["retrain"]) / statistics.mean(sec["pretrain"])
    print(f"{run_dir}: {len(sec['pretrain'])} pretraining epochs, median {pre:.2f} s; {len(sec['retrain'])} "
          f"retraining epochs, median {re:.2f} s; epoch ratio {re / pre:.3f} (of the means {mean:.3f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-autograd", action="store_true", help="skip the autograd prior's steps")
    ap.add_argument("--epoch-ratio", action="store_true", help="the run's epoch times, from its history")
    args = ap.parse_args()
    if args.epoch_ratio:
        epoch_ratio(args.run_dir)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunDir.open(args.run_dir)
    t, meta = run.load("retrained")
    pcfg = from_dict(PriorConfig, meta["retrain"]["prior"])
    pt, pmeta = run.load("pretrained")
    start_model = model_from_checkpoint(pt, pmeta)
    start_prior = GaussianMixturePrior(pcfg, list(select_parameters(start_model, cover=pcfg.cover).values()))
    end_model, end_prior = model_from_checkpoint(t, meta), prior_from_checkpoint(t, meta)
    from sws.prior.kernel import kernel_available
    print(f"model {meta['model']}, torch threads {torch.get_num_threads()}, C kernel {kernel_available()}, "
          f"{args.steps} steps x {args.blocks} alternating blocks")
    print("| state | plain step (ms) | step with prior (ms) | ratio | autograd prior step (ms) | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, model, prior in (("start of retraining", start_model, start_prior),
                               ("end of retraining", end_model, end_prior)):
        load = os.getloadavg()[0]
        a, b, r, slow = measure(model, prior, pcfg.cover, args.steps, args.blocks, not args.no_autograd)
        print(f"| {name} | {a:.2f} | {b:.2f} | {r:.3f} | {slow:.1f} | {slow / a:.1f} |"
              f"  load {load:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

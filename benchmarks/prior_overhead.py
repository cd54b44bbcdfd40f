"""Cost of the mixture prior in a training step, against a plain step, same model, same process.

Usage:
  python benchmarks/prior_overhead.py RUN_DIR [--steps 40] [--blocks 6] [--threads N] [--no-autograd]
                                            [--before OTHER_KERNEL.so]
  python benchmarks/prior_overhead.py RUN_DIR --epoch-ratio
  python benchmarks/prior_overhead.py RUN_DIR --snap       (also steps of the snap phase)

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

With --before, a second build of the C kernel (another version of _kernel.c with the
same entry points, e.g. built from an older commit since sws_train_step, 2026-12-02; for
older builds and the Python around them, benchmarks/engine_step_ab.py) takes a copy of the
prior, and its steps are a third kind of block in the same alternation: both ratios come
from the same blocks under the same load.

With --clock thread the blocks are timed by the calling thread's CPU time instead of the
wall clock: at one thread (all of a step's work on that thread) a measure that the other
jobs of a loaded machine do not inflate; at two threads it leaves out the second thread.

With --epoch-ratio it times nothing: it reads RUN_DIR/history.json and prints the
median retraining epoch against the median pretraining epoch of that run (and, where the
run had a snap phase, the same without its epochs and for them alone).
"""

import argparse
import contextlib
import copy
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from sws.config import from_dict, PriorConfig, retrain_config
from sws.prior import kernel as K
from sws.prior.kernel import mixture_nll_reference
from sws.method.surface import select_parameters
from sws.runs.stages import model_from_checkpoint, prior_from_checkpoint
from sws.prior import GaussianMixturePrior
from sws.runs.rundir import RunDir
from sws.method.loop import adam, retrain_optimizer
from sws.method.snap import Snap


CLOCK = time.perf_counter  # --clock thread: time.thread_time, the calling thread's CPU time


def time_block(fn, steps):
    t0 = CLOCK()
    for _ in range(steps):
        fn()
    return (CLOCK() - t0) / steps


def load_other_kernel(path):
    """The ctypes library of another build of the kernel (same entry points)."""
    import sws.prior._kernel as ext
    saved = ext.__file__
    ext.__file__ = path
    try:
        lib = K._load()
    finally:
        ext.__file__ = saved
    if lib is None:
        raise SystemExit(f"{path}: not a build of sws.prior._kernel with the same entry points")
    return lib


class with_kernel:
    """Run the prior's calls (and create its workspace) on library ``lib``."""

    def __init__(self, lib):
        self.lib = lib

    def __enter__(self):
        self.saved, K._LIB = K._LIB, self.lib

    def __exit__(self, *exc):
        K._LIB = self.saved


def measure(model, prior, cover, steps, blocks=6, autograd=True, before_lib=None, snap=False):
    cfg = retrain_config("tutorial")
    covered = list(select_parameters(model, cover=cover).values())
    plain_opt = adam(model.parameters(), 1e-4)  # the engine's Adam, as the prior step's
    prior_opt = retrain_optimizer(model, prior, cfg)
    if before_lib is not None:  # the same prior on the other kernel, its own workspace and optimiser
        prior_b = copy.deepcopy(prior)
        prior_b._workspace = K.Workspace()
        prior_b_opt = retrain_optimizer(model, prior_b, cfg)
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))
    scale = cfg.tau / 60000

    def plain():
        loss = F.cross_entropy(model(x), y)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    snapper = Snap(prior, covered, 1e-2)
    cx = torch.zeros((), dtype=torch.float64)  # the loop's running sum of C

    def prior_step(prior, opt, snapped=False):  # snapped: a step of the snap phase
        with snapper.applied() if snapped else contextlib.nullcontext():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        prior.backward_complexity(covered, scale, acc=cx, factor=len(y))   # as the loop calls it
        opt.step()

    def with_prior():
        prior_step(prior, prior_opt)

    def with_prior_before():
        prior_step(prior_b, prior_b_opt)

    def with_prior_snapped():
        prior_step(prior, prior_opt, snapped=True)

    def autograd_prior():  # the straightforward prior: every weight against every component
        loss = F.cross_entropy(model(x), y)
        loss = loss + scale * (mixture_nll_reference(*prior.mixture(), covered) + prior.hyper_prior())
        prior_opt.zero_grad(set_to_none=True)
        loss.backward()
        prior_opt.step()

    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}

    def timed(fn, p=prior):
        """A block of ``steps`` steps from the state measured (every block starts there: the
        steps move the weights, and a moved state is not the one named)."""
        model.load_state_dict(state)
        p.load_state_dict(pstate)
        return time_block(fn, steps)
    ratios, plain_ms, prior_ms, ratios_b, prior_b_ms, snap_ms, ratios_s = [], [], [], [], [], [], []
    for _ in range(blocks):
        a = timed(plain)
        b = timed(with_prior)
        ratios.append(b / a)
        plain_ms.append(a * 1e3)
        prior_ms.append(b * 1e3)
        if snap:
            c = timed(with_prior_snapped)
            ratios_s.append(c / a)
            snap_ms.append(c * 1e3)
        if before_lib is not None:
            with with_kernel(before_lib):
                c = timed(with_prior_before, prior_b)
            ratios_b.append(c / a)
            prior_b_ms.append(c * 1e3)
    if before_lib is not None:  # free its workspace with its own library
        before_lib.sws_free(prior_b._workspace._handle)
        prior_b._workspace._handle = None
    model.load_state_dict(state)
    prior.load_state_dict(pstate)
    slow = time_block(autograd_prior, 3) if autograd else float("nan")
    model.load_state_dict(state)
    prior.load_state_dict(pstate)
    before = (statistics.median(prior_b_ms), statistics.median(ratios_b)) if before_lib is not None else None
    snapped = (statistics.median(snap_ms), statistics.median(ratios_s)) if snap else None
    return (statistics.median(plain_ms), statistics.median(prior_ms), statistics.median(ratios),
            slow * 1e3, before, snapped)


def epoch_ratio(run_dir):
    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    history = history["history"] if isinstance(history, dict) else history
    sec = {stage: [r["seconds"] for r in history if r.get("stage") == stage] for stage in ("pretrain", "retrain")}
    pre, re = statistics.median(sec["pretrain"]), statistics.median(sec["retrain"])
    mean = statistics.mean(sec["retrain"]) / statistics.mean(sec["pretrain"])
    plain = [r["seconds"] for r in history if r.get("stage") == "retrain" and not r.get("snap")]
    snap = [r["seconds"] for r in history if r.get("stage") == "retrain" and r.get("snap")]
    print(f"{run_dir}: {len(sec['pretrain'])} pretraining epochs, median {pre:.2f} s; {len(sec['retrain'])} "
          f"retraining epochs, median {re:.2f} s; epoch ratio {re / pre:.3f} (of the means {mean:.3f})")
    if snap:   # the snap phase's epochs (sws.method.snap) are retraining epochs of another kind
        print(f"  without the {len(snap)} snap-phase epochs: {len(plain)}, median {statistics.median(plain):.2f} s, "
              f"ratio {statistics.median(plain) / pre:.3f}; snap-phase epochs median {statistics.median(snap):.2f} s, "
              f"ratio {statistics.median(snap) / pre:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-autograd", action="store_true", help="skip the autograd prior's steps")
    ap.add_argument("--epoch-ratio", action="store_true", help="the run's epoch times, from its history")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="wall clock, or the calling thread's CPU time")
    ap.add_argument("--before", metavar="SO", help="another build of the C kernel, timed in the same blocks")
    ap.add_argument("--snap", action="store_true",
                    help="also time steps of the snap phase (through the snap, sws.method.snap)")
    args = ap.parse_args()
    if args.epoch_ratio:
        epoch_ratio(args.run_dir)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread":
        global CLOCK
        CLOCK = time.thread_time
    run = RunDir.open(args.run_dir)
    t, meta = run.load("retrained")
    pcfg = from_dict(PriorConfig, meta["retrain"]["prior"])
    pt, pmeta = run.load("pretrained")
    start_model = model_from_checkpoint(pt, pmeta)
    start_prior = GaussianMixturePrior(pcfg, list(select_parameters(start_model, cover=pcfg.cover).values()))
    end_model, end_prior = model_from_checkpoint(t, meta), prior_from_checkpoint(t, meta)
    before_lib = load_other_kernel(args.before) if args.before else None
    print(f"model {meta['model']}, torch threads {torch.get_num_threads()}, C kernel {K.kernel_available()}, "
          f"{args.steps} steps x {args.blocks} alternating blocks, clock {args.clock}"
          + (f", before: {args.before}" if args.before else ""))
    extra = (" step, before (ms) | ratio, before |" if args.before else "") + \
        (" snap-phase step (ms) | ratio |" if args.snap else "")
    print(f"| state | plain step (ms) | step with prior (ms) | ratio |{extra} autograd prior step (ms) | ratio |")
    print("| --- | ---: | ---: | ---: |" + (" ---: | ---: |" if args.before else "")
          + (" ---: | ---: |" if args.snap else "") + " ---: | ---: |")
    for name, model, prior in (("start of retraining", start_model, start_prior),
                               ("end of retraining", end_model, end_prior)):
        load = os.getloadavg()[0]
        a, b, r, slow, before, snapped = measure(model, prior, pcfg.cover, args.steps, args.blocks,
                                                 not args.no_autograd, before_lib, args.snap)
        cols = (f" {before[0]:.2f} | {before[1]:.3f} |" if before else "") + \
            (f" {snapped[0]:.2f} | {snapped[1]:.3f} |" if snapped else "")
        print(f"| {name} | {a:.2f} | {b:.2f} | {r:.3f} |{cols} {slow:.1f} | {slow / a:.1f} |"
              f"  load {load:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Where the prior's cost in a retraining step goes, in one process, on a finished run's kept state.

Five kinds of step (batch 256, random MNIST-shaped data), alternated in blocks: a plain step with
torch's default Adam; a plain step with the engine's Adam (``sws.method.loop.adam``, fused); the
plain step plus the prior's gradient (plain one-group Adam); the four-group Adam of retraining
without the prior; the full retraining step.  Prints the median time of each and its ratio to the
plain step.

Usage: python benchmarks/prior_parts.py RUN_DIR [--threads N] [--blocks 8] [--steps 40]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sws.config import retrain_config
from sws.method.loop import adam, retrain_optimizer
from sws.runs.inputs import covered_of, model_from_checkpoint, prior_from_checkpoint
from sws.runs.rundir import RunDir


def fixed_batch(n=256):
    """The benchmarks' fixed batch: ``n`` random MNIST-shaped images and labels, seeded (0)."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def kept_state(run_dir):
    """(its record, model, prior, covered tensors, step) of a run's kept state; ``step(opt, with_prior)`` runs one
    step on a fixed random batch of 256 MNIST-shaped images."""
    tensors, meta = RunDir.open(run_dir).load("retrained")
    model, prior = model_from_checkpoint(tensors, meta), prior_from_checkpoint(tensors, meta)
    covered = list(covered_of(model, meta["retrain"]["prior"]).values())
    x, y = torch.rand(256, 1, 28, 28), torch.randint(0, 10, (256,))

    def step(opt, with_prior):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if with_prior:
            prior.backward_complexity(covered, 1e-7)
        opt.step()

    return meta, model, prior, covered, step


def alternate_steps(kinds, model, covered, scale, rounds, steps, clock, seed=0):
    """Blocks of ``steps`` timed steps (after 3 more) for each kind, in a shuffled order each round,
    each from the model's state at the start (and its prior's).  ``kinds``: name -> (prior or None
    for the plain step, optimiser, context manager factory around the block).  Returns per kind the
    mean step of each round, and per prior kind the median call of the prior in each round."""
    import random
    x, y = fixed_batch()
    cx = torch.zeros((), dtype=torch.float64)  # the loop's running sum of C
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstates = {k: {n: v.clone() for n, v in p.state_dict().items()} for k, (p, _, _) in kinds.items() if p is not None}
    means = {k: [] for k in kinds}
    calls = {k: [] for k in pstates}
    rng = random.Random(seed)
    for _ in range(rounds):
        for kind in rng.sample(list(kinds), len(kinds)):
            prior, opt, context = kinds[kind]
            ts, cs = [], []
            with context():
                model.load_state_dict(state)
                if prior is not None:
                    prior.load_state_dict(pstates[kind])
                for _ in range(steps + 3):
                    t0 = clock()
                    loss = F.cross_entropy(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if prior is not None:
                        t1 = clock()
                        prior.backward_complexity(covered, scale, acc=cx, factor=len(y))
                        cs.append(clock() - t1)
                    opt.step()
                    ts.append(clock() - t0)
            means[kind].append(statistics.mean(ts[3:]))
            if prior is not None:
                calls[kind].append(statistics.median(cs[3:]))
    return means, calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    meta, model, prior, _, step = kept_state(args.run_dir)
    plain_opt = adam(model.parameters(), 1e-4)  # the engine's Adam, as the prior step's
    default_opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # torch's default (for-loop) Adam
    prior_opt = retrain_optimizer(model, prior, retrain_config("tutorial"))
    kinds = {"plain step, torch's default Adam": (default_opt, False),
             "plain step": (plain_opt, False), "plain + prior's gradient": (plain_opt, True),
             "four-group Adam, no prior": (prior_opt, False), "retraining step": (prior_opt, True)}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    times = {k: [] for k in kinds}
    for _ in range(args.blocks):
        for name, (opt, with_prior) in kinds.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(opt, with_prior)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
            model.load_state_dict(state)
            prior.load_state_dict(pstate)
    base = statistics.median(times["plain step"])
    print(f"model {meta['model']}, torch threads {torch.get_num_threads()}")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.3f} ms | {statistics.median(t) / base:.3f} |")


if __name__ == "__main__":
    main()

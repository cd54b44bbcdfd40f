#!/usr/bin/env python
"""What watching the post-processed network costs per retraining epoch (issue 13).

    python benchmarks/watch_cost.py RUN [--threads N] [--repeat 3]

RUN is a finished run folder (retrained and validation split recorded).  Times, in one
process, one retraining epoch of the network (the loop, no watch) and one ``Budget.watch()``
(copy, post-process, evaluate on the validation split, encode the file), and prints their ratio.
"""

import argparse
import time

import torch

from sws.method.loop import retrain
from sws.method.watch import Budget
from sws.runs.inputs import covered_of, header_of, load_data, model_from_checkpoint, prior_from_checkpoint
from sws.runs.rundir import RunDir
from sws.config import RetrainConfig, from_dict


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunDir.open(args.run)
    tensors, meta = run.load("retrained")
    model = model_from_checkpoint(tensors, meta)
    prior = prior_from_checkpoint(tensors, meta)
    covered = covered_of(model, meta["retrain"]["prior"])
    train, val, _ = load_data(meta["data"], args.data_dir)
    cfg = from_dict(RetrainConfig, {**meta["retrain"], "epochs": 1, "budget": False})
    budget = Budget(model, prior, covered, val, threshold=1e-2, max_error_increase=None, header=header_of(meta))
    epochs, watches = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        retrain(model, prior, train, cfg, quiet=True, covered=list(covered.values()))
        epochs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        budget.watch()
        watches.append(time.perf_counter() - t0)
    e, w = sorted(epochs)[len(epochs) // 2], sorted(watches)[len(watches) // 2]
    print(f"{meta['model']}: torch threads {torch.get_num_threads()}, {len(train)} training and {len(val)} "
          f"validation images; epoch {e:.2f} s, watch {w:.3f} s, watch / epoch {w / e:.3f} "
          f"(medians of {args.repeat})")


if __name__ == "__main__":
    main()

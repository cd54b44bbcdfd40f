"""Time per retraining epoch of WRN-16-4 on synthetic CIFAR-shaped data.

Runs a few retraining steps (cross-entropy backward, the prior's complexity
gradient, Adam) on random 32x32 images and extrapolates to an epoch of 50,000
images; the prior's share is timed separately.  CPU by default, ``--device
cuda`` where there is a GPU (the prior then takes the dense path on the GPU).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/wrn_bench.py --steps 5 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

from sws.api import complexity_backward, select_parameters
from sws.config import retrain_config
from sws.prior import GaussianMixturePrior
from sws.train import retrain_optimizer
from sws.wrn import build_wrn

EPOCH_IMAGES = 50_000


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="resnet")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = retrain_config(args.preset, batch_size=args.batch_size)
    model = build_wrn(seed=0).to(device)
    covered = select_parameters(model, cover=cfg.prior.cover)
    prior = GaussianMixturePrior(cfg.prior, list(covered.values())).to(device)
    opt = retrain_optimizer(model, prior, cfg)
    weights, scale = list(covered.values()), cfg.tau / EPOCH_IMAGES
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    data_t, prior_t, step_t = [], [], []
    model.train()
    for i in range(args.steps + 1):
        sync(device)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t1 = time.perf_counter()
        complexity_backward(prior, weights, scale)
        sync(device)
        t2 = time.perf_counter()
        opt.step()
        sync(device)
        t3 = time.perf_counter()
        if i:   # the first step warms up allocators and kernels
            data_t.append(t1 - t0)
            prior_t.append(t2 - t1)
            step_t.append(t3 - t0)
    steps_per_epoch = math.ceil(EPOCH_IMAGES / args.batch_size)
    med = lambda v: sorted(v)[len(v) // 2]
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "batch_size": args.batch_size, "timed_steps": args.steps,
        "covered_weights": sum(w.numel() for w in weights), "components": prior.n_components,
        "step_s": med(step_t), "data_term_s": med(data_t), "prior_s": med(prior_t),
        "prior_share": sum(prior_t) / sum(step_t),
        "epoch_s_extrapolated": med(step_t) * steps_per_epoch, "steps_per_epoch": steps_per_epoch,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

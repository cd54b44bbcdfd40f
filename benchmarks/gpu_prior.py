"""The prior's cost on a GPU: step ratio and peak memory, dense autograd prior vs the fused path vs a plain step.

Usage:
  python benchmarks/gpu_prior.py [--device cuda] [--steps 20] [--blocks 5] [--models wrn,mlp]
                                 [--mlp-width 8192] [--json OUT.json]

Two networks, random data of the right shape: WRN-16-4 (``sws.zoo.wrn.build_wrn()``,
batch 128 of 3x32x32, the ``resnet`` preset's prior: 64 components over the weights)
and a synthetic MLP of about 100 million parameters (1024-8192-8192-2560-1000,
batch 256, the ``tutorial`` prior over all parameters).  For each, alternating
blocks of steps of three kinds, the same optimiser settings:

- plain: cross-entropy, backward, Adam;
- fused: cross-entropy, backward, ``prior.backward_complexity(weights, tau/N)``
  (the float32 fused path on the GPU, compiled with ``torch.compile`` where Triton
  is there), Adam with the four groups of retraining; the value of C stays on the
  device (no host synchronisation in the step);
- dense: the straightforward autograd prior, every weight against every component
  (``sws.prior.kernel.mixture_nll_reference``), in the loss.

It prints the median time per step of each kind, the ratios to the plain step
(targets: fused <= 1.05 on WRN-16-4, <= 1.10 at 100 M parameters) and the peak
memory of a step of each kind (``torch.cuda.max_memory_allocated``; target: fused
<= 1.2x plain).  A dense step that runs out of memory is reported as such.

Without a GPU it says so and exits with status 0, measuring nothing (``--device cpu
--mlp-width 256 --steps 2 --blocks 1`` runs the same code on the CPU, as a check of
the script).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from sws.config import retrain_config
from sws.method.loop import adam, retrain_optimizer
from sws.method.surface import select_parameters
from sws.prior import GaussianMixturePrior
from sws.prior.kernel import mixture_nll_reference


def mlp(width: int) -> nn.Module:
    sizes = [1024, width, width, max(width * 5 // 16, 16), 1000]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def setup(name: str, device: torch.device, width: int):
    if name == "wrn":
        from sws.zoo.wrn import build_wrn
        model, preset, batch, shape, classes = build_wrn(), "resnet", 128, (3, 32, 32), 10
    else:
        model, preset, batch, shape, classes = mlp(width), "tutorial", 256, (1024,), 1000
    model = model.to(device)
    cfg = retrain_config(preset)
    covered = list(select_parameters(model, cover=cfg.prior.cover).values())
    prior = GaussianMixturePrior(cfg.prior, covered).to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(batch, *shape, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    return model, prior, cfg, covered, x, y


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name, device, steps, blocks, width):
    model, prior, cfg, covered, x, y = setup(name, device, width)
    n_params = sum(p.numel() for p in model.parameters())
    scale = cfg.tau / 50000
    plain_opt = adam(model.parameters(), 1e-4)  # the engine's Adam, as the prior step's
    prior_opt = retrain_optimizer(model, prior, cfg)
    values = []

    def plain():
        loss = F.cross_entropy(model(x), y)
        plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        plain_opt.step()

    def fused():
        loss = F.cross_entropy(model(x), y)
        prior_opt.zero_grad(set_to_none=True)
        loss.backward()
        values.append(prior.backward_complexity(covered, scale))  # a device tensor: no sync
        prior_opt.step()

    def dense():
        loss = F.cross_entropy(model(x), y)
        loss = loss + scale * (mixture_nll_reference(*prior.mixture(), covered) + prior.hyper_prior())
        prior_opt.zero_grad(set_to_none=True)
        loss.backward()
        prior_opt.step()

    kinds = {"plain": plain, "fused": fused, "dense": dense}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pstate = {k: v.clone() for k, v in prior.state_dict().items()}
    t0 = time.perf_counter()
    fused()  # the first fused step compiles (torch.compile), the others reuse it
    sync(device)
    first = time.perf_counter() - t0
    times = {k: [] for k in kinds}
    peak = {}
    failed = {}
    for _ in range(blocks):
        for kind, fn in kinds.items():
            if kind in failed:
                continue
            model.load_state_dict(state)  # every block from the same state
            prior.load_state_dict(pstate)
            try:
                fn()  # warm-up, outside the timing
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t = time.perf_counter()
                for _ in range(steps):
                    fn()
                sync(device)
                times[kind].append((time.perf_counter() - t) / steps)
                if device.type == "cuda":
                    peak[kind] = max(peak.get(kind, 0), torch.cuda.max_memory_allocated(device))
            except torch.cuda.OutOfMemoryError:  # the dense prior at 100 M parameters may not fit
                failed[kind] = "out of memory"
                prior_opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
    complexity = float(values[-1]) if values else float("nan")  # read once, at the end
    med = {k: statistics.median(v) * 1e3 for k, v in times.items() if v}
    return {"model": name, "parameters": n_params, "covered": sum(w.numel() for w in covered),
            "components": prior.n_components, "batch": x.shape[0], "steps": steps, "blocks": blocks,
            "ms": med, "ratio": {k: v / med["plain"] for k, v in med.items()},
            "peak_mb": {k: v / 2**20 for k, v in peak.items()},
            "peak_ratio": {k: v / peak["plain"] for k, v in peak.items()} if "plain" in peak else {},
            "failed": failed, "first_fused_step_s": first, "complexity": complexity}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--models", default="wrn,mlp")
    ap.add_argument("--mlp-width", type=int, default=8192)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("not measured (no GPU available on this machine)")
        return
    info = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {info}, torch {torch.__version__}, {args.steps} steps x {args.blocks} alternating blocks")
    print("| model | parameters | plain (ms) | fused (ms) | ratio | dense (ms) | ratio | "
          "peak plain (MB) | fused / plain | dense / plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    results = []
    for name in args.models.split(","):
        r = measure(name, device, args.steps, args.blocks, args.mlp_width)
        results.append(r)
        ms, ratio, pr = r["ms"], r["ratio"], r["peak_ratio"]

        def cell(d, k, fmt):
            return fmt.format(d[k]) if k in d else r["failed"].get(k, "n/a")
        print(f"| {name} | {r['parameters'] / 1e6:.1f} M | {ms['plain']:.2f} | {cell(ms, 'fused', '{:.2f}')} | "
              f"{cell(ratio, 'fused', '{:.3f}')} | {cell(ms, 'dense', '{:.2f}')} | {cell(ratio, 'dense', '{:.2f}')} | "
              f"{r['peak_mb'].get('plain', float('nan')):.0f} | {cell(pr, 'fused', '{:.3f}')} | "
              f"{cell(pr, 'dense', '{:.2f}')} |")
        print(f"  (first fused step, compilation included: {r['first_fused_step_s']:.1f} s; C = {r['complexity']:.6g})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": info, "torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

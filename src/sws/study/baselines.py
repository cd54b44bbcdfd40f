"""Baselines for Table 1: Deep Compression (Han et al. 2016) and its no-retraining floor.

Deep Compression, as used here for any of our models:

1. **Iterative magnitude pruning.** Each weight tensor keeps its largest-|w|
   share (Han et al.'s LeNet rates, ``HAN_KEEP``), reached in a few steps
   (keep_s = keep^(s/S)); between steps the net is retrained with the pruned
   weights held at zero.
2. **Weight sharing.** Per layer, k-means over the surviving weights with
   linear initialisation between their min and max, skipping the pruned gap
   around zero (32 clusters, 5 bits, for every layer by default; Han used 8
   bits for conv layers).
3. **Centroid fine-tuning.** The gradient of a shared value is the sum of its
   weights' gradients (Han et al. 2016, section 3.1); biases are trained too.
4. The result goes to the same ``.sws`` writer as soft weight-sharing, so its
   rate is counted in bytes on disk.  The file has one codebook; the per-layer
   centroids are stored as the union of all layers' codebooks (entry 0 = 0).
   Biases are not pruned or quantised (stored raw float32, as in Han et al.).

The floor is step 1 in one shot and step 2, without any retraining.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sws.zoo.mnist import Dataset, batches

__all__ = ["HAN_KEEP", "DeepCompressionConfig", "weight_names", "keep_rates", "magnitude_masks",
           "apply_masks", "train_masked", "linear_init", "kmeans_1d", "share_weights", "finetune_centroids",
           "deep_compression", "prune_and_quantize", "save_baseline"]

# Han et al. 2016, Table 1/4: share of weights kept per weight tensor, in layer order
HAN_KEEP = {
    "lenet-300-100": (0.08, 0.09, 0.26),           # fc1, fc2, fc3
    "lenet-5-caffe": (0.66, 0.12, 0.08, 0.19),     # conv1, conv2, fc1, fc2
}
DEFAULT_KEEP = 0.10   # other models: about LeNet's overall rate, every layer alike


@dataclass
class DeepCompressionConfig:
    prune_steps: int = 3              # iterative pruning in a few steps (Han: repeated prune/retrain)
    epochs_per_step: int = 2          # masked retraining after each pruning step
    lr: float = 3e-4                  # Adam; a fraction of pretraining's 1e-3, as Han retrains with lower lr
    clusters_conv: int = 32           # 5-bit conv codebooks (Han: 8 bits; brief: 5 bits everywhere)
    clusters_fc: int = 32             # 5 bits for fully connected layers (Han)
    kmeans_iters: int = 100           # Lloyd iterations (stops earlier when assignments settle)
    finetune_epochs: int = 1          # centroid fine-tuning
    finetune_lr: float = 1e-4         # Adam on centroids and biases
    batch_size: int = 256
    seed: int = 0


def weight_names(model: torch.nn.Module) -> list[str]:
    """Names of the weight tensors (conv kernels and linear matrices), in layer order."""
    return [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]


def keep_rates(model: torch.nn.Module, model_name: str) -> dict[str, float]:
    """Han et al.'s per-layer keep rates for ``model_name``; ``DEFAULT_KEEP`` for others."""
    names = weight_names(model)
    rates = HAN_KEEP.get(model_name, (DEFAULT_KEEP,) * len(names))
    if len(rates) != len(names):
        raise ValueError(f"{model_name}: {len(rates)} keep rates for {len(names)} weight tensors")
    return dict(zip(names, rates))


def magnitude_masks(weights: dict[str, torch.Tensor], keep: dict[str, float]) -> dict[str, torch.Tensor]:
    """Per tensor, True for its round(keep * size) weights of largest magnitude."""
    masks = {}
    for name, w in weights.items():
        flat = w.detach().abs().reshape(-1)
        k = max(1, min(flat.numel(), round(keep[name] * flat.numel())))
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[torch.topk(flat, k, sorted=False).indices] = True
        masks[name] = mask.reshape(w.shape)
    return masks


@torch.no_grad()
def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Set pruned weights to +0.0 in place."""
    for name, m in masks.items():
        p = model.get_parameter(name)
        p.copy_(torch.where(m, p, torch.zeros((), dtype=p.dtype)))


def train_masked(model: torch.nn.Module, masks: dict[str, torch.Tensor], train: Dataset,
                 epochs: int, lr: float, batch_size: int = 256, seed: int = 0) -> None:
    """Cross-entropy training with Adam, pruned weights held at zero (masked gradients)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    apply_masks(model, masks)
    model.train()
    for _ in range(epochs):
        for x, y in batches(train, batch_size, gen):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for name, m in masks.items():
                model.get_parameter(name).grad.mul_(m)
            opt.step()
            apply_masks(model, masks)   # Adam's momentum would otherwise revive pruned weights


def linear_init(x: torch.Tensor, k: int) -> torch.Tensor:
    """k centroids evenly spaced between min and max, skipping the gap that pruning left.

    After magnitude pruning the surviving weights lie in [min, -t] and [t, max];
    Han et al.'s linear initialisation over [min, max] would put the centroids
    inside (-t, t) where no weight is left (empty clusters, wasted codebook
    entries), so the k points are spaced evenly over the two intervals instead.
    """
    neg, pos = x[x < 0], x[x >= 0]
    parts = [(float(p.min()), float(p.max())) for p in (neg, pos) if p.numel()]
    lengths = [hi - lo for lo, hi in parts]
    u = torch.linspace(0.0, sum(lengths), k, dtype=torch.float64)
    if len(parts) == 1:
        return parts[0][0] + u
    return torch.where(u <= lengths[0], parts[0][0] + u, parts[1][0] + (u - lengths[0]))


def kmeans_1d(values: torch.Tensor, k: int, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars, centroids initialised linearly (``linear_init``).

    Returns (centroids float64 (k,), label of every value).  An empty cluster keeps its
    centroid (and goes unused).  Assignment to sorted centroids is a search between
    midpoints, so one iteration costs O(n log k).
    """
    x = values.detach().double().reshape(-1)
    c = linear_init(x, k)
    labels = None
    for _ in range(iters):
        new = torch.searchsorted((c[1:] + c[:-1]) / 2, x)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        count = torch.bincount(labels, minlength=k).double()
        total = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, x)
        c = torch.where(count > 0, total / count.clamp(min=1), c)
        c, order = torch.sort(c)
        labels = torch.argsort(order)[labels]
    return c, labels


@dataclass
class SharedLayer:
    """A weight tensor as codebook indices: -1 where pruned, else an index into ``centroids``."""

    index: torch.Tensor
    centroids: torch.Tensor   # float32 (k,), trainable during fine-tuning

    def weight(self) -> torch.Tensor:
        w = self.centroids[self.index.clamp(min=0)]
        return torch.where(self.index >= 0, w, torch.zeros((), dtype=w.dtype))


def share_weights(model: torch.nn.Module, masks: dict[str, torch.Tensor], cfg: DeepCompressionConfig
                  ) -> dict[str, SharedLayer]:
    """Per-layer k-means over the surviving weights; writes the shared weights into ``model``."""
    shared = {}
    for name, m in masks.items():
        p = model.get_parameter(name)
        k = cfg.clusters_conv if p.dim() == 4 else cfg.clusters_fc
        c, labels = kmeans_1d(p.detach()[m], min(k, int(m.sum())), cfg.kmeans_iters)
        index = torch.full(p.shape, -1, dtype=torch.long)
        index[m] = labels
        shared[name] = SharedLayer(index, c.float())
    _write_shared(model, shared)
    return shared


@torch.no_grad()
def _write_shared(model, shared: dict[str, SharedLayer]) -> None:
    for name, s in shared.items():
        model.get_parameter(name).copy_(s.weight())


def finetune_centroids(model: torch.nn.Module, shared: dict[str, SharedLayer], train: Dataset,
                       epochs: int, lr: float, batch_size: int = 256, seed: int = 0) -> None:
    """Train the shared values: dL/dc_k = sum of dL/dw over the weights in cluster k.

    Every other parameter (biases) is trained as usual; pruned weights stay zero.
    """
    gen = torch.Generator().manual_seed(seed)
    cents = [s.centroids.requires_grad_(True) for s in shared.values()]
    others = [p for n, p in model.named_parameters() if n not in shared]
    opt = torch.optim.Adam([{"params": cents}, {"params": others}], lr=lr)
    model.train()
    for _ in range(epochs):
        for x, y in batches(train, batch_size, gen):
            _write_shared(model, shared)
            loss = F.cross_entropy(model(x), y)
            model.zero_grad(set_to_none=True)   # the weights are not in opt: clear their grads too
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for name, s in shared.items():
                p = model.get_parameter(name)
                live = s.index >= 0
                s.centroids.grad = torch.zeros_like(s.centroids).index_add_(
                    0, s.index[live], p.grad[live])
                p.grad = None
            opt.step()
    for c in cents:
        c.requires_grad_(False)
    _write_shared(model, shared)


def deep_compression(model: torch.nn.Module, model_name: str, train: Dataset,
                     cfg: DeepCompressionConfig, workdir: str | Path | None = None,
                     log: Callable[[str], None] = print) -> dict:
    """Prune iteratively with retraining, share weights by k-means, fine-tune the centroids.

    ``model`` is changed in place.  With ``workdir``, each pruning step's net is
    checkpointed there and a rerun resumes after the last finished step.

    Returns: per-stage seconds, keep rates and codebook sizes.
    """
    from sws.runs.checkpoint import load_checkpoint, save_checkpoint
    torch.manual_seed(cfg.seed)
    keep = keep_rates(model, model_name)
    info = {"keep": keep, "seconds": {}}
    t0 = time.perf_counter()
    for step in range(1, cfg.prune_steps + 1):
        ckpt = Path(workdir) / f"prune-{step}" if workdir else None
        step_keep = {n: r ** (step / cfg.prune_steps) for n, r in keep.items()}
        if ckpt is not None and ckpt.with_suffix(".safetensors").is_file():
            tensors, _ = load_checkpoint(ckpt)
            model.load_state_dict(tensors)
            log(f"  prune step {step}/{cfg.prune_steps}: resumed from {ckpt}.safetensors")
            continue
        names = weight_names(model)
        masks = magnitude_masks({n: model.get_parameter(n) for n in names}, step_keep)
        train_masked(model, masks, train, cfg.epochs_per_step, cfg.lr, cfg.batch_size,
                     cfg.seed + step)
        if ckpt is not None:
            save_checkpoint(ckpt, model.state_dict(), {"model": model_name, "step": step})
        log(f"  prune step {step}/{cfg.prune_steps}: keep "
            + ", ".join(f"{100 * r:.1f}%" for r in step_keep.values())
            + f", retrained {cfg.epochs_per_step} epochs")
    info["seconds"]["prune"] = time.perf_counter() - t0
    masks = {n: model.get_parameter(n).detach() != 0 for n in weight_names(model)}
    t0 = time.perf_counter()
    shared = share_weights(model, masks, cfg)
    finetune_centroids(model, shared, train, cfg.finetune_epochs, cfg.finetune_lr, cfg.batch_size,
                       cfg.seed)
    info["seconds"]["share_and_finetune"] = time.perf_counter() - t0
    info["clusters"] = {n: int(s.centroids.numel()) for n, s in shared.items()}
    return info


def prune_and_quantize(model: torch.nn.Module, model_name: str, cfg: DeepCompressionConfig) -> dict:
    """The floor: one-shot magnitude pruning to the final rates and k-means, no retraining."""
    keep = keep_rates(model, model_name)
    names = weight_names(model)
    masks = magnitude_masks({n: model.get_parameter(n) for n in names}, keep)
    apply_masks(model, masks)
    shared = share_weights(model, masks, cfg)
    return {"keep": keep, "clusters": {n: int(s.centroids.numel()) for n, s in shared.items()}}


def save_baseline(path: str | Path, model: torch.nn.Module, model_name: str,
                  input_norm: str = "none") -> int:
    """Write a pruned, weight-shared net as ``.sws``; returns the file's size in bytes.

    The quantised tensors are the weight tensors; the codebook is the union of
    every layer's centroids (the format has one codebook, entry 0 = 0).
    """
    from sws.method.files import save
    from sws.method.deadunits import drop_dead_units
    drop_dead_units(model)   # lossless: the same post-processing as soft weight-sharing gets
    names = weight_names(model)
    for n in names:   # -0.0 is not a codebook entry; the sparse layout stores +0.0
        p = model.get_parameter(n)
        with torch.no_grad():
            p.copy_(torch.where(p == 0, torch.zeros((), dtype=p.dtype), p))
    return save(path, model, name=model_name, input_norm=input_norm, quantized=names)

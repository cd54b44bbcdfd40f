"""Compress any ``nn.Module``: ``sws.compress(model, train_loader, ...)``.

The whole method on a user's own network and data loaders: choose the
parameters the prior covers, retrain with loss + tau/N C (SPEC section 1),
post-process (merge, snap a mean to zero, assign; SPEC section 4), and
optionally write the ``.sws`` file, whose tensors are the module's
``state_dict`` entries (tied tensors stored once).  ``sws.load(path,
model=module)`` reads it back into a module of the same architecture.

Runs in one process, or in several under ``torchrun`` (``sws.distributed``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sws.method import distributed, files
from sws.method.deadunits import drop_dead_units as drop_units
from sws.config import RetrainConfig, retrain_config
from sws.errors import ConfigError
from sws.prior import GaussianMixturePrior
from sws.method.postprocess import layer_stats
from sws.prior.merge import Mixture, assign, merge_components
from sws.method.loop import retrain_optimizer

__all__ = ["NORM_TYPES", "select_parameters", "evaluate_loader", "retrain_loader",
           "quantize_module", "recalibrate_batchnorm", "save_module", "CompressionReport",
           "compress"]

# parameters of these layers are not quantised by default: a normalisation's
# scale and shift are few, and snapping them to shared values costs accuracy
NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                nn.LocalResponseNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

Pattern = str | type


def _matches(name: str, module: nn.Module, patterns: Iterable[Pattern]) -> bool:
    for p in patterns:
        if isinstance(p, type) and isinstance(module, p):
            return True
        if isinstance(p, str) and fnmatch.fnmatchcase(name, p):
            return True
    return False


def select_parameters(model: nn.Module, include: Iterable[Pattern] | None = None,
                      exclude: Iterable[Pattern] | None = None, cover: str = "all",
                      skip_norm: bool = True) -> dict[str, nn.Parameter]:
    """The parameters the prior covers, by name (each tied tensor once, under its first name).

    A trainable parameter is covered when it matches ``include`` (default:
    everything), matches nothing in ``exclude``, is not a bias when ``cover`` is
    "weights", and, with ``skip_norm``, does not belong to a normalisation layer
    (``NORM_TYPES``).  A pattern is a glob over the parameter's full name
    (``"conv1.*"``, ``"*.bias"``) or a module class, which matches the
    parameters the layer holds itself (``nn.Conv2d``, ``nn.BatchNorm2d``).

    Args:
      model: any module.
      include, exclude: lists of patterns.
      cover: "all" (the tutorial) or "weights" (skip parameters named ``*bias``).
      skip_norm: leave normalisation layers' parameters unquantised (default).
    """
    if cover not in ("all", "weights"):
        raise ConfigError(f"unknown cover {cover!r}; choose 'all' or 'weights'")
    include = list(include) if include is not None else None
    exclude = list(exclude or [])
    for p in (include or []) + exclude:
        if not isinstance(p, (str, type)):
            raise ConfigError(f"a pattern must be a glob string or a module class, got {p!r}")
    seen, out = set(), {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if id(p) in seen:
                continue
            seen.add(id(p))
            if not p.requires_grad or (cover == "weights" and p_name.endswith("bias")):
                continue
            if skip_norm and isinstance(module, NORM_TYPES):
                continue
            if include is not None and not _matches(name, module, include):
                continue
            if _matches(name, module, exclude):
                continue
            out[name] = p
    return out


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    return batch


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, loss_fn: Callable = F.cross_entropy,
                    device=None) -> dict:
    """Mean loss, and accuracy where the outputs are class scores, over ``loader``'s (x, y)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss, correct, n, classify = 0.0, 0, 0, True
    for x, y in loader:
        x, y = _to(x, device), _to(y, device)
        out = model(x)
        k = len(y)
        loss += loss_fn(out, y).item() * k
        classify = classify and out.dim() == 2 and y.dim() == 1 and not y.is_floating_point()
        if classify:
            correct += (out.argmax(1) == y).sum().item()
        n += k
    model.train(was_training)
    rec = {"loss": loss / max(n, 1)}
    if classify:
        rec.update(accuracy=correct / max(n, 1), error=1 - correct / max(n, 1))
    return rec


def _dataset_size(loader, n_train):
    if n_train is not None:
        return n_train
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        raise ConfigError("cannot tell the training set's size from the loader; pass n_train") from None


def retrain_loader(net: nn.Module, model: nn.Module, prior: GaussianMixturePrior,
                   covered: dict[str, nn.Parameter], loader, cfg: RetrainConfig, n_train: int,
                   loss_fn: Callable = F.cross_entropy, val_loader=None, device=None,
                   on_epoch: Callable[[dict], None] | None = None, quiet: bool = True) -> list[dict]:
    """Retrain ``model`` (run as ``net``, possibly its DDP wrapper) with loss + tau/N C.

    ``sws.method.loop.retrain`` for any DataLoader of (input, target) batches; N is
    the global training set size.  Returns the per-epoch records.
    """
    device = device or next(model.parameters()).device
    weights = list(covered.values())
    opt = retrain_optimizer(model, prior, cfg)
    prior_params = list(prior.parameters())
    tau_at = getattr(cfg, "tau_at", lambda epoch: cfg.tau)   # tau schedule, where configured
    try:
        steps = len(loader)
    except TypeError:
        steps = None
    history = []
    for epoch in range(1, cfg.epochs + 1):
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        net.train()
        t0, loss_sum, cx_sum, seen = time.perf_counter(), 0.0, 0.0, 0
        tau = tau_at(epoch - 1)
        for step, (x, y) in enumerate(loader):
            tau = tau_at(epoch - 1 + step / steps) if steps else tau_at(epoch - 1)
            scale = tau / n_train
            x, y = _to(x, device), _to(y, device)
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()                  # under DDP: the data term's gradients are averaged here
            complexity = prior.backward_complexity(weights, scale)
            distributed.average_gradients(prior_params)
            opt.step()
            loss_sum += loss.item() * len(y)
            cx_sum += complexity * len(y)
            seen += len(y)
        seconds = time.perf_counter() - t0
        loss_sum, cx_sum, seen = distributed.all_reduce_sum([loss_sum, cx_sum, seen], device)
        with torch.no_grad():
            flat = torch.cat([w.detach().reshape(-1) for w in weights])
            sd0 = torch.exp(-0.5 * prior.log_precisions[0])
            near_zero = (flat.abs() < 2.0 * sd0).float().mean().item()
        rec = {"stage": "retrain", "epoch": epoch, "seconds": seconds, "tau": tau,
               "train_loss": loss_sum / max(seen, 1), "complexity": cx_sum / max(seen, 1),
               "share_within_2sd_of_zero": near_zero, "prior": prior.summary()}
        if val_loader is not None:
            rec.update({f"val_{k}": v for k, v in evaluate_loader(model, val_loader, loss_fn,
                                                                  device).items()})
        history.append(rec)
        if not quiet and distributed.is_main():
            print(f"epoch {epoch}/{cfg.epochs}: loss {rec['train_loss']:.4f} complexity "
                  f"{rec['complexity']:.4g} {seconds:.1f} s", file=sys.stderr)
        if on_epoch:
            on_epoch(rec)
    return history


@torch.no_grad()
def quantize_module(covered: dict[str, nn.Parameter], prior: GaussianMixturePrior,
                    threshold: float, chunk: int = 1 << 16) -> tuple[torch.Tensor, Mixture]:
    """Merge the mixture, snap a mean to 0 and set every covered weight to its component's mean.

    In place on the parameters; assignment in chunks (bounded memory for big
    layers).  Returns the float32 codebook (entry 0 exactly 0) and the merged mixture.
    """
    m = Mixture(*(t.detach().double().cpu().clone() for t in prior.mixture()))
    merged, _ = merge_components(m, threshold)
    codebook = merged.mu.float()
    for p in covered.values():
        flat = p.detach().reshape(-1).cpu()
        idx = torch.cat([assign(flat[s:s + chunk], merged)
                         for s in range(0, flat.numel(), chunk)]) if flat.numel() else flat.long()
        p.copy_(codebook[idx].view(p.shape).to(p.dtype))
    return codebook, merged


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, device=None, max_batches: int | None = None) -> int:
    """Re-estimate batch-norm running statistics for the quantised weights; return batches used.

    Snapping weights to the codebook shifts every layer's activations, so the
    statistics gathered during retraining no longer fit (measured on the
    example CNN: 0.87 -> 0.92 accuracy).  Only the buffers change; under
    ``torchrun`` they are averaged over the ranks so replicas stay identical.
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    device = device or next(model.parameters()).device
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                       # cumulative average over the batches
    was_training = model.training
    model.train()
    n = 0
    for x, _ in loader:
        if max_batches is not None and n >= max_batches:
            break
        model(_to(x, device))
        n += 1
    model.train(was_training)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
        for buf in (m.running_mean, m.running_var):
            if distributed.is_distributed():
                torch.distributed.all_reduce(buf)
                buf /= distributed.world_size()
    return n


def save_module(path, model: nn.Module, codebook, quantized: Iterable[str]) -> int:
    """Write ``model`` as a ``.sws`` file (``sws.method.files.save``); return its size in bytes."""
    return files.save(path, model, codebook=codebook, quantized=quantized)


@dataclass
class CompressionReport:
    """What ``compress`` did: settings, per-epoch history, results; ``to_dict()`` for JSON."""

    config: dict
    covered: list[str]
    history: list[dict]
    codebook: list[float]
    layers: dict
    nonzero_share: float
    distinct_values: int
    seconds: float
    world_size: int = 1
    metrics: dict = field(default_factory=dict)   # val_* before / after retraining, after quantising
    file: dict | None = None                      # path, bytes, cr_file, cr_paper when written

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compress(model: nn.Module, train_loader, val_loader=None,
             config: RetrainConfig | str = "tutorial", *,
             include: Iterable[Pattern] | None = None, exclude: Iterable[Pattern] | None = None,
             skip_norm: bool = True, merge_threshold: float = 1e-2,
             loss_fn: Callable = F.cross_entropy, n_train: int | None = None, out=None,
             recalibrate_bn: bool = True, drop_dead_units: bool = True, device=None,
             quiet: bool = True, on_epoch: Callable[[dict], None] | None = None,
             **overrides) -> tuple[nn.Module, CompressionReport]:
    """Retrain ``model`` with the mixture prior, quantise it, optionally write ``out``.

    Args:
      model: any module; its pretrained weights are the starting point.  Changed
        in place and returned in eval mode.
      train_loader: iterable of (input, target) batches (under ``torchrun``: this
        rank's shard, e.g. with ``sws.distributed.sampler``).
      val_loader: optional (input, target) batches; its loss (and accuracy for
        class scores) is recorded before, during and after.
      config: a ``RetrainConfig`` or a preset name ("tutorial", "paper",
        "resnet"); ``overrides`` (e.g. ``epochs=3, tau=0.005, n_components=64``)
        apply to a preset.
      include, exclude, skip_norm: which parameters the prior covers
        (``select_parameters``; ``config.prior.cover`` says whether biases are in).
      merge_threshold: KL threshold for merging components (SPEC section 4).
      loss_fn: the data term, mean over the batch (default cross-entropy).
      n_train: training set size N in tau/N (default ``len(train_loader.dataset)``).
      out: path of the ``.sws`` file to write (rank 0 only).
      recalibrate_bn: after quantising, re-estimate batch-norm running statistics
        with one pass over ``train_loader`` (``recalibrate_batchnorm``).
      drop_dead_units: after quantising, zero the weights that cannot change the output
        (``sws.method.deadunits.drop_dead_units``: plain ``nn.Sequential`` nets only; lossless).
      device: where to train (default: where the model is).
    Returns:
      (the post-processed model, a ``CompressionReport``).
    """
    cfg = config if isinstance(config, RetrainConfig) else retrain_config(config, **overrides)
    if isinstance(config, RetrainConfig) and overrides:
        raise ConfigError("overrides apply to a preset name; set them on the RetrainConfig instead")
    cfg.validate()
    if merge_threshold < 0:
        raise ConfigError(f"merge_threshold must be >= 0, got {merge_threshold}")
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    n_train = _dataset_size(train_loader, n_train)
    covered = select_parameters(model, include, exclude, cfg.prior.cover, skip_norm)
    if not covered:
        raise ConfigError("the prior covers no parameter: check include / exclude")
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    net = distributed.wrap(model)        # broadcasts rank 0's weights: every replica starts equal
    prior = GaussianMixturePrior(cfg.prior, list(covered.values())).to(device)
    metrics = {}
    if val_loader is not None:
        metrics.update({f"before_{k}": v for k, v in evaluate_loader(model, val_loader, loss_fn).items()})
    history = retrain_loader(net, model, prior, covered, train_loader, cfg, n_train, loss_fn,
                             val_loader, device, on_epoch, quiet)
    codebook, _ = quantize_module(covered, prior, merge_threshold)
    dropped = drop_units(model) if drop_dead_units else 0
    if recalibrate_bn:
        recalibrate_batchnorm(model, train_loader, device)
    if val_loader is not None:
        metrics.update({f"retrained_{k}": v for k, v in history[-1].items() if k.startswith("val_")})
        metrics.update({f"quantized_{k}": v for k, v in evaluate_loader(model, val_loader, loss_fn).items()})
    stats = layer_stats(dict(covered))
    report = CompressionReport(
        config=dataclasses.asdict(cfg) | {"merge_threshold": merge_threshold, "n_train": n_train,
                                              "recalibrate_bn": recalibrate_bn,
                                              "drop_dead_units": drop_dead_units,
                                              "dead_unit_weights_dropped": dropped},
        covered=list(covered), history=history, codebook=codebook.tolist(), layers=stats["layers"],
        nonzero_share=stats["total"]["nonzero_share"], distinct_values=stats["total"]["distinct"],
        seconds=time.perf_counter() - t0, world_size=distributed.world_size(), metrics=metrics)
    if out is not None and distributed.is_main():
        from sws.format.stats import file_stats
        size = save_module(out, model, codebook, covered)
        total = file_stats(Path(out).read_bytes())["total"]
        report.file = {"path": str(out), "bytes": size, "cr_file": total["cr_file"],
                       "cr_paper": total["cr_paper"]}
    distributed.barrier()
    return model.eval(), report

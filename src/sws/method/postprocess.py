"""Post-processing of a retrained network (paper section 4, SPEC section 4), in place.

Merge the mixture's components (``sws.prior.merge``), snap the mean nearest 0
to exactly 0, set every covered weight to the mean of its most responsible
component, then zero the weights of dead units (lossless) and re-estimate
batch-norm statistics.  The codebook is deduplicated in float32 with its zero
exact, so the ``.sws`` writer can never reject it.  ``layer_stats`` is the one
definition of a network's non-zero share and distinct values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sws.method import distributed
from sws.method.batches import as_source, call_model, to_device
from sws.method.deadunits import drop_dead_units
from sws.prior.merge import Mixture, assign, merge_components

__all__ = ["Quantized", "codebook_of", "quantize_", "postprocess_", "quantize_weights",
           "recalibrate_batchnorm", "layer_stats"]

CHUNK = 1 << 16   # weights assigned at a time: J x CHUNK float64 scores, bounded memory for big layers


@dataclass
class Quantized:
    """What post-processing did: the codebook (float32, entry 0 exactly 0), the merged mixture,
    the names of the quantised tensors and the weights ``drop_dead_units`` zeroed."""

    codebook: torch.Tensor
    merged: Mixture
    names: list[str]
    dropped: int = 0


def codebook_of(mixture: Mixture, threshold: float) -> tuple[torch.Tensor, Mixture, torch.Tensor]:
    """Merge ``mixture`` (KL below ``threshold``) and round its means to float32.

    Returns:
      (codebook, merged mixture, index into the codebook of each merged component): means
      that round to the same float32 value share one entry, and entry 0 is exactly +0.0.
    """
    merged, _ = merge_components(mixture, threshold)
    values = merged.mu.float()
    values[0] = 0.0
    entries, index = [], []
    for v in values.tolist():
        v = 0.0 if v == 0 else v                 # -0.0 and 0.0 are one entry
        if v not in entries:
            entries.append(v)
        index.append(entries.index(v))
    return torch.tensor(entries, dtype=torch.float32), merged, torch.tensor(index)


def _assign_chunked(w: torch.Tensor, merged: Mixture, remap: torch.Tensor) -> torch.Tensor:
    flat = w.detach().reshape(-1).cpu()
    if not flat.numel():
        return flat.long().reshape(w.shape)
    idx = torch.cat([assign(flat[s:s + CHUNK], merged) for s in range(0, flat.numel(), CHUNK)])
    return remap[idx].reshape(w.shape)


@torch.no_grad()
def quantize_(covered: dict[str, torch.Tensor], mixture, threshold: float) -> tuple[torch.Tensor, Mixture]:
    """Snap every covered tensor, in place, to its component's mean (SPEC section 4, steps 1-3).

    Args:
      covered: the tensors the prior covers, by name (parameters of a module).
      mixture: the prior (``GaussianMixturePrior``) or a ``Mixture``.
      threshold: KL divergence below which components merge.
    Returns:
      (codebook, merged mixture).
    """
    m = mixture if isinstance(mixture, Mixture) else Mixture.from_prior(mixture)
    m = Mixture(*(t.detach().double().cpu() for t in (m.mu, m.gamma, m.log_pi)))
    codebook, merged, remap = codebook_of(m, threshold)
    for p in covered.values():
        p.copy_(codebook[_assign_chunked(p, merged, remap)].to(p.dtype).to(p.device))
    return codebook, merged


def quantize_weights(weights: dict[str, torch.Tensor], m: Mixture, threshold: float):
    """``quantize_`` on copies: (quantized tensors, indices, codebook, merged mixture) by name."""
    codebook, merged, remap = codebook_of(m, threshold)
    indices = {name: _assign_chunked(w, merged, remap) for name, w in weights.items()}
    quantized = {name: codebook[i].to(weights[name].dtype) for name, i in indices.items()}
    return quantized, indices, codebook, merged


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data, device=None, max_batches: int | None = None,
                          batch_size: int = 256) -> int:
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
    source = as_source(data, "batch-norm recalibration data")
    device = device or next(model.parameters()).device
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                       # cumulative average over the batches
    was_training = model.training
    model.train()
    n = 0
    for _, (x, _y) in source.epoch(source.batch_size or batch_size):
        if max_batches is not None and n >= max_batches:
            break
        call_model(model, to_device(x, device))
        n += 1
    model.train(was_training)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
        for buf in (m.running_mean, m.running_var):
            if distributed.is_distributed():
                torch.distributed.all_reduce(buf)
                buf /= distributed.world_size()
    return n


def postprocess_(model: nn.Module, mixture, covered: dict[str, torch.Tensor], threshold: float, *,
                 dead_units: bool = True, recalibrate=None, batch_size: int = 256, finetune=None,
                 finetune_epochs: int = 0, finetune_lr: float = 1e-4, probe=None, **finetune_kw) -> Quantized:
    """The whole post-processing, in place: ``quantize_``, then (``dead_units``)
    ``drop_dead_units``, then (``finetune_epochs`` on the training set ``finetune``) the codebook's
    fine-tuning (``sws.method.finetune``), then batch-norm recalibration on ``recalibrate``.
    ``probe``: a data set whose first items check that dropping dead units changed no output."""
    codebook, merged = quantize_(covered, mixture, threshold)
    example = None
    if probe is not None and dead_units:
        source = as_source(probe, "probe data")
        x, _ = source.batch(torch.arange(min(8, len(source))))
        example = to_device(x, next(model.parameters()).device) if torch.is_tensor(x) else None
    dropped = drop_dead_units(model, example_input=example) if dead_units else 0
    if finetune is not None and finetune_epochs > 0:
        from sws.method.finetune import finetune_codebook_
        codebook = finetune_codebook_(model, covered, codebook, finetune, epochs=finetune_epochs, lr=finetune_lr,
                                      batch_size=batch_size, **finetune_kw)
    if recalibrate is not None:
        recalibrate_batchnorm(model, recalibrate, batch_size=batch_size)
    return Quantized(codebook, merged, list(covered), dropped)


def layer_stats(tensors: dict[str, torch.Tensor]) -> dict:
    """Per tensor and overall: size, non-zeros, non-zero share, distinct values.

    The project's one definition of the non-zero share: non-zero elements of the
    quantised (covered) tensors over their number of elements."""
    rows, total, nonzero, values = {}, 0, 0, []
    for name, t in tensors.items():
        t = t.detach()
        nz = int(torch.count_nonzero(t))
        rows[name] = {"shape": list(t.shape), "size": t.numel(), "nonzero": nz,
                      "nonzero_share": nz / max(t.numel(), 1),
                      "distinct": int(torch.unique(t).numel())}
        total += t.numel()
        nonzero += nz
        values.append(t.reshape(-1))
    distinct = int(torch.unique(torch.cat(values)).numel()) if values else 0
    return {"layers": rows, "total": {"size": total, "nonzero": nonzero,
                                      "nonzero_share": nonzero / max(total, 1),
                                      "distinct": distinct}}

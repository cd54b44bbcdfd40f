"""Post-processing: merge components, snap a mean to zero, assign weights (SPEC section 4).

Pure functions on tensors; ``quantize_model`` applies them to a network.
"""

from __future__ import annotations

import torch

from sws.prior.merge import Mixture, assign, merge_components

__all__ = ["quantize_weights",
           "layer_stats"]


def quantize_weights(weights: dict[str, torch.Tensor], m: Mixture, threshold: float):
    """Merge, then snap every weight to its component's mean.

    Returns:
      (quantized tensors by name, indices by name, codebook float32 with entry 0
      exactly 0, merged mixture).
    """
    merged, _ = merge_components(m, threshold)
    codebook = merged.mu.float()
    quantized, indices = {}, {}
    for name, w in weights.items():
        idx = assign(w, merged)
        indices[name] = idx
        quantized[name] = codebook[idx].to(w.dtype)
    return quantized, indices, codebook, merged


def layer_stats(tensors: dict[str, torch.Tensor]) -> dict:
    """Per tensor and overall: size, non-zeros, non-zero share, distinct values."""
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

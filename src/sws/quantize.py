"""Post-processing: merge components, snap a mean to zero, assign weights (SPEC section 4).

Pure functions on tensors; ``quantize_model`` applies them to a network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Mixture", "kl_divergence", "merge_components", "assign", "quantize_weights", "drop_dead_units",
           "layer_stats"]


@dataclass
class Mixture:
    """A Gaussian mixture as float64 tensors: means, log-precisions, log mixing proportions."""

    mu: torch.Tensor
    gamma: torch.Tensor
    log_pi: torch.Tensor

    @classmethod
    def from_prior(cls, prior) -> "Mixture":
        with torch.no_grad():
            return cls(*(t.detach().double().clone() for t in prior.mixture()))


def kl_divergence(mu1, gamma1, mu2, gamma2):
    """KL(N(mu1, 1/lam1) || N(mu2, 1/lam2)) with lam = exp(gamma); broadcasts."""
    return 0.5 * (gamma1 - gamma2 + torch.exp(gamma2 - gamma1) - 1.0
                  + torch.exp(gamma2) * (mu1 - mu2) ** 2)


def merge_components(m: Mixture, threshold: float) -> tuple[Mixture, torch.Tensor]:
    """Merge components whose KL divergence (either direction) is below ``threshold``.

    Merging is transitive (connected components of the "close" graph).  A merged
    component has pi = sum pi, mean = pi-weighted mean, variance = pi-weighted
    mean of variances (paper Eq. 8).  Then the merged mean closest to zero is
    set to exactly 0 and moved to index 0.

    Returns:
      The merged mixture and, for every original component, its merged index.
    """
    J = m.mu.numel()
    kl = kl_divergence(m.mu[:, None], m.gamma[:, None], m.mu[None, :], m.gamma[None, :])
    close = (torch.maximum(kl, kl.T) < threshold).tolist()
    parent = list(range(J))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(J):
        for j in range(i + 1, J):
            if close[i][j]:
                parent[find(j)] = find(i)
    roots = sorted({find(i) for i in range(J)})
    group = torch.tensor([roots.index(find(i)) for i in range(J)])
    K = len(roots)
    pi = m.log_pi.exp()
    w = torch.zeros(K, dtype=torch.float64).index_add_(0, group, pi)
    mu = torch.zeros(K, dtype=torch.float64).index_add_(0, group, pi * m.mu) / w
    var = torch.zeros(K, dtype=torch.float64).index_add_(0, group, pi * torch.exp(-m.gamma)) / w
    zero = int(torch.argmin(mu.abs()))
    mu[zero] = 0.0
    order = [zero] + [k for k in range(K) if k != zero]
    remap = torch.empty(K, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(K)
    merged = Mixture(mu[order], -torch.log(var[order]), torch.log(w[order]))
    return merged, remap[group]


def assign(w: torch.Tensor, m: Mixture) -> torch.Tensor:
    """Index of the component with the largest responsibility for each weight.

    argmax_k [log pi_k + gamma_k / 2 - exp(gamma_k) (w - mu_k)^2 / 2], in log space
    so that weights far from every mean go to the most plausible component
    instead of underflowing to zero (the tutorial's linear-space bug).
    """
    x = w.detach().double().reshape(-1, 1)
    score = m.log_pi + 0.5 * m.gamma - 0.5 * m.gamma.exp() * (x - m.mu) ** 2
    return score.argmax(dim=1).reshape(w.shape)


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




# between two weighted layers, these map a unit that is exactly 0 to exactly 0 (and touch no
# other unit's value): dropping what such a unit sends on changes nothing
_ZERO_PRESERVING = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.Tanh,
                    torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.Flatten, torch.nn.Dropout,
                    torch.nn.Identity)
_WEIGHTED = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


def _unit_links(model: torch.nn.Module):
    """(layer, next layer, inputs of the next layer per unit of the first) for every two weighted
    layers of an ``nn.Sequential`` joined only by zero-preserving modules."""
    if not isinstance(model, torch.nn.Sequential):
        return []
    links, prev, clean = [], None, False
    for m in model:
        if isinstance(m, _WEIGHTED):
            ok = getattr(m, "groups", 1) == 1
            if prev is not None and clean and ok:
                units = prev.weight.shape[0]
                fan = m.weight.shape[1]
                if fan % units == 0 and (fan == units or isinstance(m, torch.nn.Linear)):
                    links.append((prev, m, fan // units))   # Flatten: channel-major blocks
            prev, clean = (m, True) if ok else (None, False)
        elif not isinstance(m, _ZERO_PRESERVING):
            prev, clean = None, False
    return links


@torch.no_grad()
def drop_dead_units(model: torch.nn.Module) -> int:
    """Zero the weights that cannot change the output: those leaving a unit whose incoming
    weights and bias are all 0 (it outputs exactly 0), and those entering a unit (with its bias)
    whose outgoing weights are all 0 (nobody reads it); repeated until nothing changes.

    Lossless for ``nn.Sequential`` nets of Linear/Conv layers joined by ReLU, max-pooling,
    Flatten and the like (``_ZERO_PRESERVING``); other models are left alone.  Returns the
    number of non-zero weights (biases included) set to zero.
    """
    removed, changed = 0, True
    links = _unit_links(model)
    while changed:
        changed = False
        for a, b, block in links:
            rows = a.weight.reshape(a.weight.shape[0], -1)
            silent = rows.ne(0).sum(1).eq(0)
            if a.bias is not None:
                silent &= a.bias.eq(0)
            cols = b.weight.reshape(b.weight.shape[0], a.weight.shape[0], block, -1)
            n = int(cols[:, silent].ne(0).sum())
            if n:
                cols[:, silent] = 0
                removed, changed = removed + n, True
            unread = cols.ne(0).sum((0, 2, 3)).eq(0)
            n = int(rows[unread].ne(0).sum()) + (int(a.bias[unread].ne(0).sum()) if a.bias is not None else 0)
            if n:
                rows[unread] = 0
                if a.bias is not None:
                    a.bias[unread] = 0
                removed, changed = removed + n, True
    return removed

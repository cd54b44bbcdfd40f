"""The mixture's post-processing maths (paper section 4, SPEC section 4): KL divergence
between components, merging (paper Eq. 8), the zero snap and the MAP assignment.

Pure functions on float64 tensors; ``sws.method.postprocess`` applies them to a network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Mixture", "kl_divergence", "merge_components", "assign", "intervals"]


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


def intervals(m: Mixture) -> tuple[torch.Tensor, torch.Tensor]:
    """``assign`` as a table over the real line: (edges, winners) with ``winners[i]`` the
    component ``assign`` gives every weight in the ``i``-th interval between sorted ``edges``
    (``torch.bucketize(w, edges)`` indexes it).

    Each component's score is a concave parabola in w, so the winner can change only where two
    scores are equal: the candidate edges are the real roots of every pairwise difference, and
    the winner between two candidates is ``assign``'s at their midpoint.  Exact up to rounding
    at the edges themselves; O(J^2) work, independent of the number of weights, so training can
    snap every step (``sws.method.snap``)."""
    mu, gamma, log_pi = (t.detach().double().cpu() for t in (m.mu, m.gamma, m.log_pi))
    lam = gamma.exp()
    c = log_pi + 0.5 * gamma
    i, j = torch.triu_indices(len(mu), len(mu), 1)
    # score_i - score_j = a w^2 + b w + k
    a = 0.5 * (lam[j] - lam[i])
    b = lam[i] * mu[i] - lam[j] * mu[j]
    k = c[i] - c[j] - 0.5 * lam[i] * mu[i] ** 2 + 0.5 * lam[j] * mu[j] ** 2
    disc = b * b - 4 * a * k
    real = disc >= 0
    sq = disc.clamp(min=0).sqrt()
    q = -0.5 * (b + torch.where(b >= 0, sq, -sq))       # stable roots: q / a and k / q
    quad = a.abs() > 1e-12 * (lam[i] + lam[j])
    roots = [torch.where(quad, q / a, -k / b)[real | ~quad], (k / q)[quad & real & (q != 0)]]
    cand = torch.cat(roots)
    cand = torch.unique(cand[torch.isfinite(cand)])
    if not cand.numel():
        return cand, assign(mu[:1], m).reshape(1)
    span = (cand[-1] - cand[0]).abs() + 1.0
    probes = torch.cat([cand[:1] - span, 0.5 * (cand[1:] + cand[:-1]), cand[-1:] + span])
    winners = assign(probes, m)
    keep = winners[1:] != winners[:-1]                    # edges between two different winners
    return cand[keep], torch.cat([winners[:1], winners[1:][keep]])

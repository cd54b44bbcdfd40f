"""The empirical Gaussian-mixture prior with Gamma hyper-priors (SPEC section 2).

    p(w) = sum_j pi_j N(w | mu_j, 1 / lambda_j),   mu_0 = 0,  pi_0 fixed,
    pi   = [pi_0, (1 - pi_0) softmax(rho)],         gamma_j = log lambda_j.

Learned: the J-1 non-zero means, the J log-precisions gamma and the J-1
mixing logits rho.  The complexity term of the retraining loss is

    C = -sum_i log p(w_i) + sum_j [(1 - alpha_j) gamma_j + beta_j exp(gamma_j)].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sws.config import PriorConfig
from sws.prior.kernel import Workspace, mixture_nll, prior_backward

__all__ = ["GaussianMixturePrior"]


class GaussianMixturePrior(nn.Module):
    """Mixture prior over network weights; all computations in log space.

    Args:
      config: ``PriorConfig`` (components, pi0, initialisation, hyper-priors).
      weights: the pretrained weights, used by the "range" initialisation
        (means spread evenly over [min, max] of the weights).
    """

    def __init__(self, config: PriorConfig | None = None, weights: list[torch.Tensor] | None = None):
        super().__init__()
        cfg = config or PriorConfig()
        cfg.validate()
        self.config = cfg
        J = cfg.n_components
        if cfg.init in ("range", "paper"):
            if not weights:
                raise ValueError(f"init={cfg.init!r} needs the pretrained weights")
            flat = torch.cat([w.detach().reshape(-1) for w in weights])
            lo, hi = flat.min().item(), flat.max().item()
        else:
            lo, hi = -cfg.init_range, cfg.init_range
        self.means = nn.Parameter(torch.linspace(lo, hi, J - 1))
        sigma = cfg.init_sigma
        if cfg.init == "paper":
            # paper section 4.2: each component with significant mass in its own region: one
            # standard deviation of a component spans the distance to its neighbours' means
            sigma = max((hi - lo) / max(J - 2, 1), 1e-6)
        self.log_precisions = nn.Parameter(torch.full((J,), -2.0 * math.log(sigma)))
        self.mixing_logits = nn.Parameter(torch.zeros(J - 1))
        if cfg.learn_pi0:  # paper option: pi0 = sigmoid(logit) under a Beta(a, b) prior
            self.pi0_logit = nn.Parameter(torch.tensor(math.log(cfg.pi0 / (1 - cfg.pi0))))
        else:
            self.register_buffer("pi0_logit", torch.tensor(math.log(cfg.pi0 / (1 - cfg.pi0))))
        alpha = torch.full((J,), cfg.alpha)
        beta = torch.full((J,), cfg.beta)
        alpha[0], beta[0] = cfg.zero_alpha, cfg.zero_beta
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self._workspace = Workspace()

    @property
    def n_components(self) -> int:
        return self.log_precisions.numel()

    def mixture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, gamma, log_pi), each of length J, component 0 the zero component."""
        mu = torch.cat([self.means.new_zeros(1), self.means])
        log_pi0 = F.logsigmoid(self.pi0_logit)
        log_rest = F.logsigmoid(-self.pi0_logit)  # log(1 - pi0), accurate for pi0 near 1
        log_pi = torch.cat([log_pi0.reshape(1), log_rest + torch.log_softmax(self.mixing_logits, 0)])
        return mu, self.log_precisions, log_pi

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """Elementwise log p(w), exact (dense over components, float64)."""
        mu, gamma, log_pi = (t.double() for t in self.mixture())
        x = w.double().unsqueeze(-1)
        lj = log_pi + 0.5 * gamma - 0.5 * math.log(2 * math.pi) - 0.5 * gamma.exp() * (x - mu) ** 2
        return torch.logsumexp(lj, dim=-1)

    def neg_log_likelihood(self, weights: list[torch.Tensor]) -> torch.Tensor:
        """-sum_i log p(w_i) over all tensors, with closed-form gradients (sws.prior.kernel)."""
        mu, gamma, log_pi = self.mixture()
        return mixture_nll(mu, gamma, log_pi, weights, workspace=self._workspace)

    @property
    def pi0(self) -> torch.Tensor:
        return torch.sigmoid(self.pi0_logit)

    def hyper_prior(self) -> torch.Tensor:
        """Negative log hyper-prior densities, constants dropped.

        Gamma(alpha_j, beta_j) on every precision, in the gamma = log lambda
        parametrisation: (1 - alpha_j) gamma_j + beta_j exp(gamma_j); and, when
        pi0 is learned, Beta(a, b) on pi0: -(a - 1) log pi0 - (b - 1) log(1 - pi0).
        """
        g = self.log_precisions
        total = ((1.0 - self.alpha) * g + self.beta * g.exp()).sum()
        if self.config.learn_pi0:
            total = total - ((self.config.pi0_a - 1.0) * F.logsigmoid(self.pi0_logit)
                             + (self.config.pi0_b - 1.0) * F.logsigmoid(-self.pi0_logit))
        return total

    def complexity(self, weights: list[torch.Tensor]) -> torch.Tensor:
        """C = -log p(weights) + hyper-prior terms (SPEC section 1)."""
        return self.neg_log_likelihood(weights) + self.hyper_prior()

    def backward_complexity(self, weights: list[torch.Tensor], scale: float, *, acc: torch.Tensor | None = None,
                            factor: float = 1.0):
        """Add ``scale * dC/dp`` to the ``.grad`` of the weights and the mixture parameters.

        The same gradients as ``(scale * self.complexity(weights)).backward()``,
        but with no autograd graph: float32 CPU tensors take one call of the C
        kernel (``sws.prior.kernel``), tensors on a GPU the fused float32 path on
        their device (``sws.prior.fused``), and the mixture's gradients follow in
        closed form.  Call it after the data term's ``backward()``.

        Returns:
          The value of C as a 0-d float64 tensor on the prior's device: reading it
          (``float(c)``, ``.item()``) synchronises with a GPU, so a training loop
          should sum it on the device and read it once per epoch.  With ``acc`` (a float64
          tensor of one element on the prior's device) ``C * factor`` is added to it instead,
          without the tensor operations of returning and summing C, and C is returned as a
          Python float (the C kernel; no synchronisation) or the 0-d tensor.

        On the C kernel a mixture parameter whose ``.grad`` is None (as ``zero_grad()``
        leaves it) gets the same gradient buffer back at every call, set rather than added to.
        """
        return prior_backward(self, weights, scale, acc, factor)

    def summary(self) -> dict:
        """Current mixture as plain lists: means, standard deviations, mixing proportions."""
        with torch.no_grad():
            mu, gamma, log_pi = self.mixture()
            return {"means": mu.tolist(), "stds": (-0.5 * gamma).exp().tolist(),
                    "pis": log_pi.exp().tolist()}

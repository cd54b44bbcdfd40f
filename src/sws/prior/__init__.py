"""The prior: the Gaussian mixture over the weights, its fused kernel, and the mixture maths
of post-processing (KL divergence, merging, assignment)."""

from sws.prior.merge import Mixture
from sws.prior.merge import assign
from sws.prior.merge import kl_divergence
from sws.prior.merge import merge_components
from sws.prior.mixture import GaussianMixturePrior

__all__ = ["Mixture", "assign", "kl_divergence", "merge_components", "GaussianMixturePrior"]

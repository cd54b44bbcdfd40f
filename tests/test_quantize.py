"""Post-processing invariants (SPEC section 4)."""

import math

import torch

from sws.quantize import Mixture, assign, merge_components, quantize_weights


def mixture(mus, sds, pis):
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    return Mixture(t(mus), -2 * torch.log(t(sds)), torch.log(t(pis) / sum(pis)))


def test_identical_components_merge_and_zero_stays_exact():
    m = mixture([0.0, 0.2, 0.2, -0.3, 0.0005], [0.01, 0.02, 0.02, 0.02, 0.01], [0.9, 0.03, 0.03, 0.02, 0.02])
    merged, group = merge_components(m, threshold=1e-2)
    assert merged.mu.numel() == 3  # {0, 0.0005}, {0.2, 0.2}, {-0.3}
    assert merged.mu[0].item() == 0.0
    assert group[1] == group[2] and group[0] == group[4] == 0
    assert math.isclose(merged.log_pi.exp().sum().item(), 1.0, rel_tol=1e-12)
    assert torch.isclose(merged.mu[group[1]], torch.tensor(0.2, dtype=torch.float64))


def test_merge_is_transitive_and_threshold_zero_merges_nothing_distinct():
    m = mixture([0.0, 0.10, 0.11, 0.12], [0.05, 0.05, 0.05, 0.05], [0.7, 0.1, 0.1, 0.1])
    merged, group = merge_components(m, threshold=0.05)  # neighbours close, ends not
    assert len(set(group[1:].tolist())) == 1
    merged0, _ = merge_components(m, threshold=0.0)
    assert merged0.mu.numel() == 4


def test_every_weight_becomes_a_codebook_value():
    torch.manual_seed(0)
    m = mixture([0.0, -0.2, 0.1, 0.3], [0.01, 0.03, 0.02, 0.05], [0.9, 0.04, 0.03, 0.03])
    weights = {"a": torch.randn(50, 40) * 0.2, "b": torch.randn(7) * 2}
    q, idx, codebook, _ = quantize_weights(weights, m, 1e-3)
    assert codebook[0].item() == 0.0
    for name, t in q.items():
        assert torch.isin(t, codebook).all()
        assert torch.equal(t, codebook[idx[name]])


def test_far_weight_goes_to_nearest_plausible_component_not_zero():
    m = mixture([0.0, 0.5], [0.001, 0.05], [0.99, 0.01])
    # in linear space both densities underflow to 0 at w = 5 and argmax picks index 0
    w = torch.tensor([5.0, -4.0, 0.49, 0.0001])
    assert assign(w, m).tolist() == [1, 1, 1, 0]

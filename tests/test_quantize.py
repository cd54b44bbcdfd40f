"""Post-processing invariants (SPEC section 4)."""

import math

import pytest
import torch

from sws.method.postprocess import Mixture, assign, merge_components, quantize_weights


def mixture(mus, sds, pis):
    def t(v):
        return torch.tensor(v, dtype=torch.float64)
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


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5-caffe"])
def test_dropping_dead_units_is_lossless_and_finds_them_all(name):
    from sws.zoo.models import build_model
    from sws.method.deadunits import drop_dead_units
    torch.manual_seed(0)
    net = build_model(name, seed=0).eval()
    layers = [m for m in net if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.no_grad():
        for m in layers:                   # sparse, like a compressed net
            m.weight.mul_(torch.rand_like(m.weight) < 0.3)
        a, b = layers[-2], layers[-1]
        a.weight[:7] = 0                   # 7 units of the last hidden layer output exactly 0 ...
        a.bias[:7] = 0
        b.weight[:, 7:12] = 0              # ... 5 more are read by nobody
        first, second = layers[0], layers[1]
        first.weight[2] = 0                # a silent channel / unit in the first layer
        first.bias[2] = 0
    nonzeros = lambda: sum(int(p.ne(0).sum()) for p in net.parameters())   # noqa: E731
    expect = int(b.weight[:, :7].ne(0).sum())
    x = torch.rand(64, 1, 28, 28)
    before, nnz = net(x), nonzeros()
    removed = drop_dead_units(net)
    assert removed == nnz - nonzeros() and removed > expect > 0
    assert second.weight.reshape(second.weight.shape[0], first.weight.shape[0], -1)[:, 2].eq(0).all()
    assert torch.allclose(net(x), before, atol=1e-6, rtol=0)
    assert (net(x).argmax(1) == before.argmax(1)).all()
    assert b.weight[:, :7].eq(0).all() and a.weight[7:12].eq(0).all() and a.bias[7:12].eq(0).all()
    assert drop_dead_units(net) == 0   # a fixed point


def test_dead_units_are_kept_across_layers_that_do_not_map_zero_to_zero():
    from sws.method.deadunits import drop_dead_units
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2),
                              torch.nn.Sigmoid(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight[0] = 0
            m.bias[0] = 0
    assert drop_dead_units(net) == 0                       # BatchNorm shifts, sigmoid(0) = 0.5
    assert drop_dead_units(torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2)})) == 0

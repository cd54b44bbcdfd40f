"""drop_dead_units: only provable layouts, checked on a probe batch, undone otherwise."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sws.method import deadunits
from sws.method.deadunits import drop_dead_units


def nonzeros(net):
    return sum(int(p.ne(0).sum()) for p in net.parameters())


def params(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def kill(layer, units):
    """Units of ``layer`` that output exactly 0: incoming weights and bias zero."""
    with torch.no_grad():
        layer.weight[units] = 0
        if layer.bias is not None:
            layer.bias[units] = 0


def check_lossless(net, x, **kw):
    """drop_dead_units on ``net``; outputs on ``x`` equal and the count right; returns it."""
    net.eval()
    before, nnz = net(x), nonzeros(net)
    removed = drop_dead_units(net, **kw)
    assert removed == nnz - nonzeros(net)
    assert torch.equal(net(x), before)
    return removed


def test_linear_on_3d_input_before_flatten_interleaves_units():
    """A Linear on (n, T, in) puts its units on the last axis: Flatten interleaves them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4, 3))
    kill(net[0], [1])
    x = torch.randn(8, 5, 6)
    untouched = params(net)
    plain = copy.deepcopy(net)
    assert drop_dead_units(plain) == 0        # no probe: (4, 6) does not run, so no Flatten link
    assert all(torch.equal(v, untouched[k]) for k, v in plain.state_dict().items())
    removed = check_lossless(net, x, example_input=x)               # with the input's shape: proven
    cols = net[3].weight.reshape(3, 5, 4)
    assert removed == 15 and cols[:, :, 1].eq(0).all() and cols[:, :, [0, 2, 3]].ne(0).all()


def test_the_old_channel_major_assumption_would_have_changed_the_output():
    """What the previous version did on this net (columns 5..9 zeroed) changes the output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4, 3)).eval()
    kill(net[0], [1])
    x = torch.randn(8, 5, 6)
    wrong = copy.deepcopy(net)
    with torch.no_grad():
        wrong[3].weight[:, 5:10] = 0
    assert not torch.equal(wrong(x), net(x))


def test_conv_flatten_linear_is_channel_major():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 3 * 3, 4))
    kill(net[0], [0, 3])
    x = torch.rand(6, 2, 8, 8)
    assert check_lossless(net, x, example_input=x) == 2 * 9 * 4
    cols = net[4].weight.reshape(4, 5, 9)
    assert cols[:, [0, 3]].eq(0).all() and cols[:, [1, 2, 4]].ne(0).all()


@pytest.mark.parametrize("groups,out", [(1, 6), (2, 6), (3, 9), (6, 6), (6, 12)])   # 6, 12: depthwise
def test_grouped_and_depthwise_convolutions(groups, out):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, out, 3, groups=groups), nn.ReLU(),
                        nn.Conv2d(out, 2, 1))
    kill(net[0], [1, 4])
    with torch.no_grad():
        net[4].weight[:, 0] = 0          # channel 0 of the grouped layer is read by nobody
    x = torch.rand(4, 3, 9, 9)
    removed = check_lossless(net, x)
    w = net[2].weight                    # (out, 6 / groups, 3, 3): output o reads channel g * per + j
    per, out_per = 6 // groups, out // groups
    for o in range(out):
        for j in range(per):
            c = (o // out_per) * per + j
            assert bool(w[o, j].eq(0).all()) == (c in (1, 4) or o == 0), (o, j, c)
    assert removed > 0 and net[2].bias[0] == 0


def test_grouped_conv_as_the_first_layer_of_a_pair():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.ReLU(), nn.Conv2d(8, 3, 3))
    kill(net[0], [5])
    x = torch.rand(2, 4, 7, 7)
    assert check_lossless(net, x) == 3 * 9 and net[2].weight[:, 5].eq(0).all()


def test_batch_norm_keeps_what_reads_a_silent_unit_and_drops_what_nobody_reads():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3))
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net[1].bias.data.uniform_(-1, 1)
    kill(net[0], [2])                      # silent, but BN(0) = beta - mean * gamma / sd is not 0
    with torch.no_grad():
        net[3].weight[:, 4] = 0            # channel 4 is read by nobody
    x = torch.rand(3, 2, 8, 8)
    reading_2 = net[3].weight[:, 2].clone()
    removed = check_lossless(net, x)
    assert torch.equal(net[3].weight[:, 2], reading_2)          # kept: it reads a constant
    assert net[0].weight[4].eq(0).all() and net[0].bias[4] == 0   # dropped: unread
    assert removed == 2 * 9 + 1


def test_batch_norm_1d_after_a_linear_on_3d_input_is_left_alone():
    """BatchNorm1d on (n, T, units) normalises over axis 1 (T), mixing the units."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with torch.no_grad():
        net[2].weight[:, 1] = 0            # unit 1 unread, on the last axis
    x = torch.randn(5, 4, 3)               # T = 4 = units, so BatchNorm1d(4) runs on axis 1
    before = params(net)
    assert drop_dead_units(net, example_input=x) == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    x2 = torch.randn(5, 3)                 # on 2-D input the units are BatchNorm's channels
    assert check_lossless(net, x2, example_input=x2) == 3 + 1


def test_non_contiguous_weights_are_changed_in_place():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        for m in net[0], net[2]:
            m.weight = nn.Parameter(m.weight.detach().t().contiguous().t())   # transposed strides
    assert not net[0].weight.is_contiguous() and not net[2].weight.is_contiguous()
    kill(net[0], [2])
    with torch.no_grad():
        net[2].weight[:, 0] = 0
    x = torch.randn(7, 5)
    assert check_lossless(net, x) == 3 + 5 + 1
    assert net[2].weight[:, 2].eq(0).all() and net[0].weight[0].eq(0).all()


def test_unknown_modules_end_the_chain_and_are_untouched():
    class Double(nn.Module):
        def forward(self, x):
            return 2 * x
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(4, 4), Double(), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    for m in net[0], net[2]:
        kill(m, [1])
    before = params(net)
    assert drop_dead_units(net) == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_only_the_proven_pair_changes():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3),
                        nn.ReLU(), nn.Linear(3, 2))
    kill(net[0], [0])
    kill(net[4], [1])
    with torch.no_grad():
        net[2].weight[:, 3] = 0
    before = params(net)
    removed = check_lossless(net, torch.randn(9, 4))
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert removed > 0 and changed == {"0.weight", "0.bias", "2.weight", "6.weight"}
    assert torch.equal(net[3].weight, before["3.weight"])


def test_a_layout_that_lies_is_caught_by_the_probe_and_undone(monkeypatch):
    """Claim, wrongly, that Sigmoid keeps 0 at 0: the probe sees the output change."""
    monkeypatch.setattr(deadunits, "_KEEP_ZERO", deadunits._KEEP_ZERO | {nn.Sigmoid})
    torch.manual_seed(9)
    net = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))
    kill(net[0], [3])
    before = params(net)
    assert drop_dead_units(net) == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_tied_and_repeated_layers_and_other_containers_are_left_alone():
    torch.manual_seed(10)
    lin = nn.Linear(4, 4)
    kill(lin, [0])
    twice = nn.Sequential(lin, nn.ReLU(), lin)
    before = params(twice)
    assert drop_dead_units(twice) == 0 and all(torch.equal(v, before[k]) for k, v in twice.state_dict().items())
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    kill(a, [0])
    assert drop_dead_units(nn.Sequential(a, nn.ReLU(), b)) == 0
    assert drop_dead_units(nn.ModuleDict({"a": nn.Linear(2, 2)})) == 0


def test_the_probe_leaves_rng_modes_and_gradients_as_they_were():
    torch.manual_seed(11)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                        nn.Linear(4 * 26 * 26, 3)).train()
    net[5].weight.data[:, :26 * 26] = 0                         # channel 0 unread
    rng = torch.get_rng_state()
    stats = net[1].running_mean.clone()
    assert drop_dead_units(net) == 9 + 1                       # the probe found 28 x 28
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in net.modules())
    assert torch.equal(net[1].running_mean, stats)


# --- random nets: lossless, counted right, nothing else touched ---------------------------

@st.composite
def nets(draw):
    """A random Sequential of Linear layers (on 2-D or 3-D input) or convolutions, with
    activations, pooling, batch-norm and Flatten between, some units dead."""
    conv = draw(st.booleans())
    layers, width = [], draw(st.integers(2, 6))
    first = width
    if conv:
        side = 12
        for _ in range(draw(st.integers(1, 3))):
            out = draw(st.integers(1, 4)) * draw(st.sampled_from([1, 2]))
            g = draw(st.sampled_from([g for g in (1, 2, 3, width) if width % g == 0 and out % g == 0] or [1]))
            layers.append(nn.Conv2d(width, out, 3, padding=1, groups=g))
            width = out
            layers.append(draw(st.sampled_from([nn.ReLU(), nn.Tanh(), nn.BatchNorm2d(width), nn.Sigmoid(),
                                                nn.Identity()])))
            if draw(st.booleans()) and side >= 4:
                layers.append(nn.MaxPool2d(2))
                side //= 2
        layers.append(nn.Flatten())
        width *= side * side
        x_shape = (5, first, 12, 12)
    else:
        t = draw(st.sampled_from([None, 3]))
        for _ in range(draw(st.integers(1, 3))):
            out = draw(st.integers(1, 6))
            layers.append(nn.Linear(width, out))
            width = out
            layers.append(draw(st.sampled_from([nn.ReLU(), nn.GELU(), nn.Sigmoid(), nn.Identity()]
                                               + ([nn.BatchNorm1d(width)] if t is None else []))))
        if t is not None:
            layers.append(nn.Flatten())
            width *= t
        x_shape = (5, first) if t is None else (5, t, first)
    layers.append(nn.Linear(width, 3))
    net = nn.Sequential(*layers)
    seed = draw(st.integers(0, 2 ** 16))
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.bias.uniform_(-1, 1)
            elif hasattr(m, "weight") and m.weight is not None and m.weight.dim() > 1:
                m.weight.mul_(torch.rand_like(m.weight) < 0.6)
                dead = torch.rand(m.weight.shape[0]) < 0.3
                m.weight[dead] = 0
                m.bias[dead] = 0
                cols = torch.rand(m.weight.shape[1]) < 0.2
                m.weight[:, cols] = 0
    return net.eval(), x_shape, draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets())
def test_random_nets_lose_nothing(case):
    net, x_shape, give_input = case
    x = torch.randn(x_shape)
    before, nnz, ref = net(x), nonzeros(net), copy.deepcopy(net)
    linked = {id(m) for u, b in deadunits._links(net, deadunits._probe(net, x)[2]) for m in (u.layer, b)}
    kw = {"example_input": x} if give_input else {}
    removed = drop_dead_units(net, **kw)
    assert removed == nnz - nonzeros(net)
    x2 = torch.randn(x_shape)                      # another input of the same shape
    assert torch.equal(net(x), before) and torch.equal(net(x2), ref(x2))
    for m, r in zip(net, ref):
        if id(m) not in linked:
            assert all(torch.equal(p, q) for p, q in zip(m.parameters(), r.parameters()))
    assert drop_dead_units(net, **kw) == 0                     # a fixed point

"""Training through the snap (sws.method.snap): the table of assignments, the swap of the
covered tensors, and the snap phase that follows retraining."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import sws
from sws.config import lr_factor
from sws.method.postprocess import quantize_weights
from sws.method.snap import Snap
from sws.prior import GaussianMixturePrior
from sws.prior.merge import Mixture, assign, intervals


def _mixture(J, seed, equal_precisions=False):
    g = torch.Generator().manual_seed(seed)
    gamma = torch.full((J,), 6.0) if equal_precisions else torch.rand(J, generator=g) * 12 + 1
    return Mixture((torch.randn(J, generator=g) * 0.3).double(), gamma.double(),
                   torch.log_softmax(torch.randn(J, generator=g).double() * 3, 0))


@pytest.mark.parametrize("J", [1, 2, 3, 17])
@pytest.mark.parametrize("equal", [False, True])
def test_intervals_give_assign_answer_everywhere(J, equal):
    for seed in range(20):
        m = _mixture(J, seed, equal)
        w = torch.cat([torch.randn(5000, dtype=torch.float64) * s for s in (0.05, 0.5, 5.0)])
        edges, winners = intervals(m)
        assert torch.all(edges[1:] > edges[:-1]) and len(winners) == len(edges) + 1
        assert torch.equal(winners[torch.bucketize(w, edges)], assign(w, m))


def _net_and_prior():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    covered = [p for p in net.parameters()]
    prior = GaussianMixturePrior(sws.PriorConfig(n_components=8, init_sigma=0.05), covered)
    return net, covered, prior


def test_snap_applied_holds_the_post_processed_values_then_restores():
    net, covered, prior = _net_and_prior()
    before = [p.detach().clone() for p in covered]
    want, *_ = quantize_weights({str(i): p.detach() for i, p in enumerate(covered)}, Mixture.from_prior(prior), 1e-2)
    snap = Snap(prior, covered, 1e-2)
    x = torch.randn(4, 10)
    with snap.applied():
        for i, p in enumerate(covered):
            assert torch.equal(p.detach(), want[str(i)])
        net(x).sum().backward()
    assert all(torch.equal(p.detach(), b) for p, b in zip(covered, before))
    assert all(p.grad is not None for p in covered)      # the gradient at the snapped values stays
    with pytest.raises(RuntimeError, match="boom"):
        with snap.applied():
            raise RuntimeError("boom")
    assert all(torch.equal(p.detach(), b) for p, b in zip(covered, before))


def test_snap_blocks_reuse_their_buffers_and_nest():
    """Block after block the continuous values go to the same buffers; a block inside another gets
    its own, and each restores what it found."""
    net, covered, prior = _net_and_prior()
    before = [p.detach().clone() for p in covered]
    snap = Snap(prior, covered, 1e-2)
    with snap.applied():
        first = snap._saved
    with snap.applied():
        assert snap._saved is first
        inside = [p.detach().clone() for p in covered]     # the snapped values
        with torch.no_grad():
            covered[0].add_(1.0)                             # moved inside the outer block
        with snap.applied():
            assert snap._saved is first                      # the inner block did not take them
        assert torch.equal(covered[0].detach(), inside[0] + 1.0)
    assert all(torch.equal(p.detach(), b) for p, b in zip(covered, before))


def toy(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def pretrained():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    sws.pretrain(model, toy(), sws.PretrainConfig(epochs=5, batch_size=64), quiet=True)
    return model


SETTINGS = dict(epochs=4, batch_size=64, tau=0.05, lr_weights=2e-3, lr_log_precisions=1e-2, lr_mixing=1e-2,
                init_sigma=0.05, max_error_increase=5.0, patience=0, finetune_epochs=0, drop_dead_units=False)


def test_the_snap_phase_trains_the_network_the_user_keeps():
    _, report = sws.compress(pretrained(), toy(), toy(seed=1), snap_epochs=3, **SETTINGS)
    rows = report.history
    assert [r["epoch"] for r in rows] == list(range(1, 8))
    assert [bool(r.get("snap")) for r in rows] == [False] * 4 + [True] * 3
    assert [bool(r.get("snap_begins")) for r in rows] == [False, False, False, True, False, False, False]
    for r in rows[4:]:
        # scored through the snap, the trained network is the post-processed one
        assert r["val_error"] == pytest.approx(r["pp_val_error"], abs=1e-12)
        assert r["val_loss"] == pytest.approx(r["pp_val_loss"], rel=1e-5)
    assert report.budget["status"] == "within"
    kept = next(r for r in rows if r["epoch"] == report.budget["epoch"])
    assert report.metrics["quantized_error"] == pytest.approx(kept["pp_val_error"], abs=1e-12)


def test_no_snap_phase_with_snap_epochs_0_or_without_the_budget():
    _, a = sws.compress(pretrained(), toy(), toy(seed=1), snap_epochs=0, **SETTINGS)
    assert len(a.history) == 4 and not any(r.get("snap") for r in a.history)
    _, b = sws.compress(pretrained(), toy(), toy(seed=1), budget=False, **SETTINGS)
    assert len(b.history) == 4 and not any(r.get("snap") for r in b.history)


def test_snap_epochs_must_be_a_count():
    with pytest.raises(sws.ConfigError, match="snap_epochs"):
        sws.retrain_config("tutorial", snap_epochs=-1)
    with pytest.raises(sws.ConfigError, match="snap_lr_schedule must be one of constant, cosine"):
        sws.retrain_config("tutorial", snap_lr_schedule="linear")


@pytest.mark.parametrize("retrain, snap, decays", [
    ("constant", "", False), ("constant", "cosine", True), ("cosine", "", True), ("cosine", "constant", False)])
def test_the_snap_phase_restarts_the_rates_on_its_own_schedule(retrain, snap, decays):
    _, report = sws.compress(pretrained(), toy(), toy(seed=1), snap_epochs=3, lr_schedule=retrain,
                             snap_lr_schedule=snap, **SETTINGS)
    rows = report.history
    assert [bool(r.get("snap")) for r in rows] == [False] * 4 + [True] * 3
    # lr_scale is the factor at each epoch's last step; 8 steps an epoch, 24 in the phase
    want = [lr_factor(snap or retrain, 8 * k + 7, 24) for k in range(3)]
    assert [r["lr_scale"] for r in rows[4:]] == pytest.approx(want)
    assert (want[-1] < 0.01) if decays else want == [1.0] * 3
    assert rows[3]["lr_scale"] == pytest.approx(lr_factor(retrain, 31, 32))


def test_the_surface_snaps_for_a_loop_of_ones_own():
    model = pretrained()
    sws_ = sws.SoftWeightSharing(model, "tutorial", n_train=512)
    opt = sws_.optimizer()
    before = [p.detach().clone() for p in sws_.weights]
    x, y = toy()[:64]
    with sws_.snapped():
        assert any(not torch.equal(p, b) for p, b in zip(sws_.weights, before))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
    assert all(torch.equal(p.detach(), b) for p, b in zip(sws_.weights, before))
    sws_.backward()
    opt.step()
    assert any(not torch.equal(p.detach(), b) for p, b in zip(sws_.weights, before))


@pytest.mark.parametrize("n_edges", [9, 15, 40])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 5000])
def test_the_c_pass_gives_bucketize_answer(n, n_edges):
    """Also with at most 16 values (AVX-512 takes them by a permute) and more (a gather)."""
    from sws.prior.kernel import kernel_available, snap_swap_
    if not kernel_available():
        pytest.skip("C kernel not built")
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, generator=g) * 0.3
    w[0] = float("nan") if n > 300 else w[0]
    edges = torch.randn(n_edges, generator=g) * 0.3
    edges[3] = w[-1]                                     # a weight exactly on an edge
    edges, _ = torch.sort(edges)
    values = torch.randn(n_edges + 1, generator=g)
    want = values[torch.bucketize(w, edges)]
    saved, got = torch.empty_like(w), w.clone()
    assert snap_swap_(got, saved, edges, values)
    nan = torch.isnan(w)
    assert torch.equal(got[~nan], want[~nan]) and torch.equal(saved[~nan], w[~nan])
    assert not snap_swap_(w.double(), saved.double(), edges, values)     # not for C: the caller's job


def test_the_c_pass_gives_the_same_bits_on_every_instruction_set():
    from sws.prior.kernel import kernel_available
    if not kernel_available():
        pytest.skip("C kernel not built")
    code = (
        "import hashlib, torch\n"
        "from sws.prior.kernel import snap_swap_\n"
        "g = torch.Generator().manual_seed(1)\n"
        "h = hashlib.sha256()\n"
        "for ne in (5, 15, 16, 33):\n"
        "    w = torch.randn(3001, generator=g) * 0.3\n"
        "    w[7] = float('nan'); w[8] = float('inf'); w[9] = -float('inf')\n"
        "    edges, _ = torch.sort(torch.randn(ne, generator=g) * 0.3)\n"
        "    values = torch.randn(ne + 1, generator=g)\n"
        "    saved = torch.empty_like(w)\n"
        "    assert snap_swap_(w, saved, edges, values)\n"
        "    h.update(w.numpy().tobytes()); h.update(saved.numpy().tobytes())\n"
        "print(h.hexdigest())\n")
    import os
    import subprocess
    import sys
    outs = []
    for extra in ({}, {"SWS_KERNEL_NO_AVX512": "1"}, {"SWS_KERNEL_NO_SIMD": "1"}):
        env = dict(os.environ, **extra)
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   check=True).stdout.strip())
    assert len(set(outs)) == 1, outs

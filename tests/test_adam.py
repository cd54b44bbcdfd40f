"""sws.method.adam.Adam: torch's fused Adam with a leaner step, the same bits."""

import pytest
import torch

from sws.method.adam import Adam, adam


def _net(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((300, 17), (17,), (5, 3), (16,))]


def _groups(ps):
    return [{"params": ps[:2], "lr": 1e-3}, {"params": [ps[2]], "lr": 3e-3, "weight_decay": 1e-2},
            {"params": [ps[3]], "lr": 5e-4}]


def _grads(ps, step, skip=None):
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(ps):
        p.grad = None if i == skip else torch.randn(p.shape, generator=g)


def _train(make, steps, skip_at=None, start=0, ps=None, opt=None):
    ps = ps if ps is not None else _net()
    opt = opt if opt is not None else make(_groups(ps))
    for t in range(start, start + steps):
        _grads(ps, t, skip=1 if t == skip_at else None)
        for group, base in zip(opt.param_groups, (1e-3, 3e-3, 5e-4)):
            group["lr"] = base * (1 - t / 20)     # a schedule: the rates change every step
        opt.step()
    return ps, opt


def _torch_fused(groups):
    return torch.optim.Adam(groups, fused=True)


@pytest.mark.parametrize("threads", [1, 2])
def test_same_bits_as_torchs_fused_adam(threads):
    torch.set_num_threads(threads)
    try:
        ref, _ = _train(_torch_fused, 12)
        got, opt = _train(Adam, 12)
    finally:
        torch.set_num_threads(2)
    assert opt._lists, "the lean step was not taken"
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
    assert all(float(opt.state[p]["step"]) == 12 for p in got)


def test_a_missing_gradient_and_a_resume_give_torchs_bits():
    ref, ref_opt = _train(_torch_fused, 10, skip_at=4)
    ps, opt = _train(Adam, 5, skip_at=4)
    sd = {k: v for k, v in opt.state_dict().items()}
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = Adam(_groups(ps2))
    opt2.load_state_dict(sd)
    _train(Adam, 5, start=5, ps=ps2, opt=opt2)
    for a, b in zip(ref, ps2):
        assert torch.equal(a, b)
    for p, q in zip(ref, ps2):
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ref_opt.state[p][k], opt2.state[q][k])


def test_hooks_run_once_per_step_and_a_closure_is_called():
    ps = _net()
    opt = Adam(_groups(ps))
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    for t in range(3):
        _grads(ps, t)
        opt.step()
    assert calls == ["pre", "post"] * 3
    _grads(ps, 3)
    assert opt.step(lambda: 7.0) == 7.0


def test_a_group_added_later_is_stepped():
    ps = _net()
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, ref_opt = Adam([{"params": ps[:3]}]), _torch_fused([{"params": ref[:3]}])
    for t in range(6):
        if t == 3:
            opt.add_param_group({"params": [ps[3]], "lr": 2e-3})
            ref_opt.add_param_group({"params": [ref[3]], "lr": 2e-3})
        for q in (ps, ref):
            _grads(q, t)
        opt.step()
        ref_opt.step()
    for a, b in zip(ref, ps):
        assert torch.equal(a, b)


def test_adam_falls_back_where_the_fused_kernel_cannot_run():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.int64).float())
    assert isinstance(adam([p], 1e-3), Adam)
    q = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))
    opt = adam([q], 1e-3)           # torch's fused Adam takes no complex tensors: its default one
    q.grad = torch.ones_like(q)
    opt.step()
    assert torch.isfinite(torch.view_as_real(q.detach())).all()


def test_a_cleared_state_starts_afresh_as_torchs():
    """The snap phase clears the optimiser's state (fresh moments): the lean step must not keep the old."""
    ps, opt = _train(Adam, 4)
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ref_opt = _torch_fused(_groups(ref))
    opt.state.clear()
    for g, h in zip(opt.param_groups, ref_opt.param_groups):
        g["lr"] = h["lr"]
    for t in range(4, 8):
        for q in (ps, ref):
            _grads(q, t)
        opt.step()
        ref_opt.step()
    for a, b in zip(ref, ps):
        assert torch.equal(a, b)

"""The prior's fast paths (issue 15): the C kernel's adaptive expansion, its threads and
instruction sets, its saved state; the float32 fused path (the GPU's, run here on CPU);
the closed-form mixture gradients; which path takes which tensors."""

import math
import os
import subprocess
import sys

import pytest
import torch

from sws.config import PriorConfig
from sws.prior import GaussianMixturePrior, fused
from sws.prior import kernel as K

needs_c = pytest.mark.skipif(not K.kernel_available(), reason="C kernel not built")


def mixture(J=16, lo_prec=1e2, hi_prec=1e6, seed=0, spread=0.6):
    g = torch.Generator().manual_seed(seed)
    mu = torch.cat([torch.zeros(1), torch.linspace(-spread, spread, J - 1)
                    + 0.01 * torch.randn(J - 1, generator=g)]).double()
    gamma = torch.linspace(math.log(lo_prec), math.log(hi_prec), J)[torch.randperm(J, generator=g)].double()
    log_pi = torch.log_softmax(torch.randn(J, generator=g), 0).double()
    return mu, gamma, log_pi


def weights(n=40000, seed=1, scale=0.15, extra=()):
    g = torch.Generator().manual_seed(seed)
    w = torch.cat([torch.randn(n, generator=g) * scale, torch.rand(n // 10, generator=g) * 2 - 1,
                   torch.tensor(list(extra), dtype=torch.float32)])
    return [w[: n // 2].reshape(100, -1).contiguous(), w[n // 2:].contiguous()]


def dense(mu, gamma, log_pi, ws):
    logp, S0, S1, S2, grads = K._stats_torch(mu, gamma, log_pi, ws, True)
    return logp, torch.cat([S0, S1, S2]), torch.cat([g.reshape(-1) for g in grads]).double()


def kernel(mu, gamma, log_pi, ws, calls=3, workspace=None):
    workspace = workspace or K.Workspace()
    for _ in range(calls):  # the plan follows the weights' range from the second call on
        logp, S0, S1, S2, grads = K._stats_c(mu, gamma, log_pi, ws, True, workspace)
    return logp, torch.cat([S0, S1, S2]), torch.cat([g.reshape(-1) for g in grads]).double(), workspace


def assert_close_to_dense(ours, ref, J, rel=2e-4):
    logp, S, g = ours[:3]
    rlogp, rS, rg = ref
    assert logp.item() == pytest.approx(rlogp.item(), rel=1e-6)
    assert (g - rg).abs().max().item() <= rel * rg.abs().max().item() + 1e-6
    for q in range(3):  # S0, S1, S2 each against its largest entry
        a, b = S[q * J:(q + 1) * J], rS[q * J:(q + 1) * J]
        assert (a - b).abs().max().item() <= rel * b.abs().max().item() + 1e-9


@needs_c
@pytest.mark.parametrize("lo_prec,hi_prec", [(16.0, 16.0), (1e2, 1e4), (1e3, 1e7), (1e6, 1e8)])
@pytest.mark.parametrize("J", [3, 17])
def test_kernel_matches_dense_over_sharpness(lo_prec, hi_prec, J):
    mu, gamma, log_pi = mixture(J, lo_prec, hi_prec, seed=J)
    ws = weights(extra=(0.0, 5.0, -7.5, 1e-6))
    assert_close_to_dense(kernel(mu, gamma, log_pi, ws), dense(mu, gamma, log_pi, ws), J)


@needs_c
def test_kernel_is_deterministic_per_thread_count():
    mu, gamma, log_pi = mixture(16, 1e2, 1e6)
    ws = weights(n=200000)
    threads = torch.get_num_threads()
    try:
        results = {}
        for t in (1, 2):
            torch.set_num_threads(t)
            a, b = kernel(mu, gamma, log_pi, ws), kernel(mu, gamma, log_pi, ws)
            for x, y in zip(a[:3], b[:3]):
                assert torch.equal(x, y)
            results[t] = a
        ref = dense(mu, gamma, log_pi, ws)
        for t in (1, 2):
            assert_close_to_dense(results[t], ref, 16)
    finally:
        torch.set_num_threads(threads)


@needs_c
def test_off_grid_and_non_finite_weights():
    mu, gamma, log_pi = mixture(8, 1e2, 1e4)
    ws = weights(n=2000)
    wsp = K.Workspace()
    kernel(mu, gamma, log_pi, ws, workspace=wsp)
    far = [torch.tensor([40.0, -40.0, 0.1], dtype=torch.float32)]  # off the planned grid
    got = kernel(mu, gamma, log_pi, far, calls=1, workspace=wsp)
    assert_close_to_dense(got, dense(mu, gamma, log_pi, far), 8)
    bad = [torch.tensor([0.1, float("nan"), 0.2], dtype=torch.float32)]
    logp = K._stats_c(mu, gamma, log_pi, bad, False, wsp)[0]
    assert math.isnan(logp.item())
    assert math.isfinite(K._stats_c(mu, gamma, log_pi, ws, False, wsp)[0].item())  # recovers


@needs_c
def test_modes_agree():
    """No gradient, new gradients and accumulated gradients: the same sums and gradients."""
    mu, gamma, log_pi = mixture(16, 1e2, 1e5)
    ws = weights(n=30000)
    logp, S0, S1, S2, grads = K._stats_c(mu, gamma, log_pi, ws, True, K.Workspace())
    logp2 = K._stats_c(mu, gamma, log_pi, ws, False, K.Workspace())[0]
    assert torch.equal(logp, logp2)
    acc = [w.clone().requires_grad_() for w in ws]
    for a in acc:
        a.grad = torch.full_like(a, 0.5)
    C, d_mu, _, _ = K.mixture_nll_accumulate(mu.float(), gamma.float(), log_pi.float(), acc, 2.0, K.Workspace())
    for a, g in zip(acc, grads):
        torch.testing.assert_close(a.grad, 0.5 + 2.0 * g, rtol=1e-6, atol=1e-5)
    assert C.item() == pytest.approx(-logp.item(), rel=1e-6)


def _run_subprocess(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout


_DIGEST = """
import hashlib, torch
torch.set_num_threads({threads})
from sws.prior import kernel as K
g = torch.Generator().manual_seed(0)
mu = torch.cat([torch.zeros(1), torch.linspace(-0.5, 0.5, 15)]).double()
gamma = torch.linspace(4.0, 12.0, 16).double()
log_pi = torch.log_softmax(torch.randn(16, generator=g), 0).double()
ws = [torch.randn(150001, generator=g) * 0.2, torch.randn(1003, generator=g) * 0.05]
wsp = K.Workspace()
for _ in range(3):
    logp, S0, S1, S2, grads = K._stats_c(mu, gamma, log_pi, ws, True, wsp)
h = hashlib.sha256()
for t in (logp, S0, S1, S2, *grads):
    h.update(t.contiguous().numpy().tobytes())
print(h.hexdigest())
"""


@needs_c
@pytest.mark.parametrize("threads", [1, 2])
def test_instruction_sets_and_thread_pools_give_the_same_bits(threads):
    """The AVX-512, AVX2 and portable loops, and PyTorch's OpenMP team or the kernel's own
    worker thread: bit for bit the same results."""
    code = _DIGEST.format(threads=threads)
    digests = {_run_subprocess(code, env) for env in (
        {}, {"SWS_KERNEL_NO_AVX512": "1"}, {"SWS_KERNEL_NO_SIMD": "1"}, {"SWS_KERNEL_NO_OMP": "1"})}
    assert len(digests) == 1


_DIGEST_SHARP = """
import hashlib, torch
torch.set_num_threads({threads})
from sws.prior import kernel as K
g = torch.Generator().manual_seed(0)
mu = torch.cat([torch.zeros(1), torch.linspace(-0.6, 0.6, 15)]).double()
gamma = torch.cat([torch.tensor([10.5]), torch.full((15,), 7.8)]).double()
log_pi = torch.log(torch.cat([torch.tensor([0.99]), torch.full((15,), 0.01 / 15)])).double()
n = 120001
w = torch.randn(n, generator=g) * 0.004
far = torch.rand(n, generator=g) < 0.12
w[far] = (torch.randn(int(far.sum()), generator=g) * 0.3).float()
ws = [w[:100003].contiguous(), w[100003:].contiguous(), torch.randn(37, generator=g) * 0.004]
wsp = K.Workspace()
hot = []
for _ in range(11):  # across a plan (every 8 calls)
    logp, S0, S1, S2, grads = K._stats_c(mu, gamma, log_pi, ws, True, wsp)
    hot.append(K._LIB.sws_hot(wsp.handle()))
h = hashlib.sha256()
for t in (logp, S0, S1, S2, *grads):
    h.update(t.contiguous().numpy().tobytes())
print(h.hexdigest(), sum(hot))
"""


@needs_c
@pytest.mark.parametrize("threads", [1, 2])
def test_hot_path_gives_the_same_bits(threads):
    """The AVX-512 hot path (most weights in two leaves, as at the end of retraining) against
    the scalar step and the other instruction sets: the same bits."""
    if not hasattr(K._LIB, "sws_hot"):
        pytest.skip("an older build of the kernel")
    code = _DIGEST_SHARP.format(threads=threads)
    runs = [_run_subprocess(code, env).split() for env in (
        {}, {"SWS_KERNEL_NO_HOT": "1"}, {"SWS_KERNEL_NO_AVX512": "1"}, {"SWS_KERNEL_NO_SIMD": "1"})]
    assert len({r[0] for r in runs}) == 1
    assert all(int(r[1]) == 0 for r in runs[1:])


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


_DIGEST_EDGES = """
import hashlib, numpy as np, torch
torch.set_num_threads({threads})
from sws.prior import kernel as K
g = torch.Generator().manual_seed(3)
mu = torch.cat([torch.zeros(1), torch.linspace(-0.6, 0.6, 15)]).double()
gamma = torch.cat([torch.tensor([10.5]), torch.full((15,), 7.8)]).double()
log_pi = torch.log(torch.cat([torch.tensor([0.99]), torch.full((15,), 0.01 / 15)])).double()
w = torch.randn(80001, generator=g) * 0.004
far = torch.rand(80001, generator=g) < 0.12
w[far] = (torch.randn(int(far.sum()), generator=g) * 0.3).float()
wsp = K.Workspace()
for _ in range(2):   # planned at call 0 (and next at call 8)
    K._stats_c(mu, gamma, log_pi, [w], True, wsp)
st = wsp.state_dict()
hf = st["grid_h"] / float(1 << st["D"])
flo = st["grid_lo"] - hf
edges = []           # the float32 weights next to every leaf's first fine cell
for s in st["ptr"][:st["L"] + 1].tolist():
    x = np.float32(flo + s * hf)
    for _ in range(4):
        x = np.nextafter(x, np.float32(-1.0))
    for _ in range(9):
        edges.append(x)
        x = np.nextafter(x, np.float32(1.0))
b = torch.from_numpy(np.array(edges, dtype=np.float32))
h, hot = hashlib.sha256(), []
for _ in range(3):   # calls 2-4: the same geometry
    logp, S0, S1, S2, grads = K._stats_c(mu, gamma, log_pi, [w, b], True, wsp)
    hot.append(K._LIB.sws_hot(wsp.handle()))
    for t in (logp, S0, S1, S2, *grads):
        h.update(t.contiguous().numpy().tobytes())
print(h.hexdigest(), sum(hot), b.numel())
"""


@needs_c
@pytest.mark.parametrize("threads", [1, 2])
def test_hot_path_takes_weights_on_the_leaves_edges_as_the_scalar_step(threads):
    """Weights on every leaf's edge and a few floats either side (where the hot path tells the
    window's leaves by comparing the weight with thresholds found once per call, the scalar
    step by the weight's fine index): the same bits on every instruction set."""
    if not hasattr(K._LIB, "sws_hot"):
        pytest.skip("an older build of the kernel")
    code = _DIGEST_EDGES.format(threads=threads)
    runs = [_run_subprocess(code, env).split() for env in (
        {}, {"SWS_KERNEL_NO_HOT": "1"}, {"SWS_KERNEL_NO_AVX512": "1"}, {"SWS_KERNEL_NO_SIMD": "1"})]
    assert len({r[0] for r in runs}) == 1
    if _cpu_has("avx512f"):
        assert int(runs[0][1]) == 3          # the hot path took all three calls
    assert all(int(r[1]) == 0 for r in runs[1:])
    assert int(runs[0][2]) > 100

_DIGEST_BUILDS = """
import hashlib, torch
torch.set_num_threads({threads})
from sws.prior import kernel as K
g = torch.Generator().manual_seed(1)
J = {J}
mu = torch.cat([torch.zeros(1), torch.linspace(-0.4, 0.4, J - 1)]).double()
gamma = (torch.rand(J, generator=g) * 6.0 + 4.0).double()
log_pi = torch.log_softmax(torch.randn(J, generator=g), 0).double()
if {dead}:
    log_pi[3] = float("-inf")        # a component without mass: exp of -inf, clamped
ws = [torch.randn(90001, generator=g) * 0.25, torch.randn(515, generator=g) * 0.01]
wsp = K.Workspace()
h = hashlib.sha256()
for i in range(10):  # across a plan; every call's results, as the mixture moves
    logp, S0, S1, S2, grads = K._stats_c(mu, gamma + 0.01 * i, log_pi, ws, True, wsp)
    for t in (logp, S0, S1, S2, *grads):
        h.update(t.contiguous().numpy().tobytes())
print(h.hexdigest(), wsp.n_built)
"""


@needs_c
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("J,dead", [(5, False), (40, False), (17, True)])
def test_leaves_built_before_the_pass_give_the_same_bits(threads, J, dead):
    """The leaves built before the pass eight at a time (AVX-512) and one at a time (the other
    instruction sets), with few and many active components per leaf and a component without
    mass: every call's results bit for bit the same."""
    code = _DIGEST_BUILDS.format(threads=threads, J=J, dead=dead)
    runs = [_run_subprocess(code, env).split() for env in (
        {}, {"SWS_KERNEL_NO_AVX512": "1"}, {"SWS_KERNEL_NO_SIMD": "1"})]
    assert len({r[0] for r in runs}) == 1
    assert int(runs[0][1]) > 0


@needs_c
@pytest.mark.parametrize("J,dead,sharp", [(3, False, False), (5, False, False), (40, False, False),
                                          (17, True, False), (16, False, True)])
def test_leaves_built_eight_at_a_time_match_one_at_a_time(J, dead, sharp):
    """expansion8 (AVX-512, the leaves built before the pass) against expansion for every leaf
    of a plan: log p's derivatives, the error bound, the responsibilities and the deviations,
    bit for bit (the outputs alone would hide a difference in the last bits of a small term)."""
    if not hasattr(K._LIB, "sws_check_builds"):
        pytest.skip("an older build of the kernel")
    g = torch.Generator().manual_seed(J)
    mu = torch.cat([torch.zeros(1), torch.linspace(-0.4, 0.4, J - 1)]).double()
    gamma = (torch.rand(J, generator=g) * 6.0 + (9.0 if sharp else 4.0)).double()
    log_pi = torch.log_softmax(torch.randn(J, generator=g), 0).double()
    if dead:
        log_pi[2] = float("-inf")
    ws = [torch.randn(50000, generator=g) * 0.25]
    wsp = K.Workspace()
    K._stats_c(mu, gamma, log_pi, ws, True, wsp)
    mix = K._mixture64(mu, gamma, log_pi)
    bad = K._LIB.sws_check_builds(wsp.handle(), mix[0].data_ptr(), mix[1].data_ptr(), mix[2].data_ptr())
    if bad < 0:
        pytest.skip("no AVX-512 on this machine")
    assert bad == 0


@needs_c
def test_workspace_state_round_trip_across_plans():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(20000, generator=g) * 0.1]
    mu, gamma, log_pi = mixture(7, 1e2, 1e4)

    def calls(wsp, n, start):
        outs = []
        for i in range(start, start + n):
            ws[0].grad = None
            outs.append(K.mixture_nll_accumulate(mu + 0.001 * i, gamma + 0.05 * i, log_pi, ws, 1.0, wsp)[0].item())
        return outs
    a = K.Workspace()
    calls(a, 13, 0)   # state saved between two plans
    state = a.state_dict()
    assert state["version"] == K.Workspace.VERSION and state["ptr"].dtype == torch.int32
    b = K.Workspace()
    b.load_state_dict({k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()})
    assert calls(a, 20, 13) == calls(b, 20, 13)
    with pytest.raises(ValueError):
        K.Workspace().load_state_dict({**state, "idx": state["idx"][:-1]})


def test_old_workspace_state_is_accepted():
    """A state saved by the first kernel (uniform grid) restores the counters; the next call plans."""
    old = {"calls": 5, "G": 1024, "J": 16, "lo": -0.4, "hi": 0.5, "n_exact": 3, "n_seen": 100,
           "grid": [-0.45, 0.001], "ptr": torch.zeros(1025, dtype=torch.int32),
           "idx": torch.zeros(1024 * 16, dtype=torch.int32)}
    wsp = K.Workspace()
    wsp.load_state_dict(old)
    assert wsp.calls == 5 and wsp.J is None
    mu, gamma, log_pi = mixture(16)
    w = [torch.randn(1000) * 0.1]
    if K.kernel_available():
        assert math.isfinite(K._stats_c(mu, gamma, log_pi, w, False, wsp)[0].item())


@pytest.mark.parametrize("learn_pi0", [False, True])
@pytest.mark.parametrize("path", ["c", "torch"])
def test_prior_backward_equals_autograd(learn_pi0, path, monkeypatch):
    """backward_complexity: the weights' and the mixture's gradients and C, as autograd gives them."""
    if path == "c" and not K.kernel_available():
        pytest.skip("C kernel not built")
    if path == "torch":
        monkeypatch.setattr(K, "_LIB", None)
    torch.manual_seed(0)
    cfg = PriorConfig(learn_pi0=learn_pi0, pi0_a=30.0, pi0_b=3.0, pi0=0.95) if learn_pi0 else PriorConfig()
    prior = GaussianMixturePrior(cfg)
    with torch.no_grad():
        prior.means.add_(0.02 * torch.randn_like(prior.means))
        prior.log_precisions.copy_(torch.linspace(4, 9, 16))
        prior.mixing_logits.copy_(torch.randn(15))
    ws = [(torch.randn(300, 50) * 0.1).requires_grad_(), (torch.randn(70) * 0.2).requires_grad_()]
    params = [p for p in prior.parameters()]
    for w in ws:
        w.grad = torch.ones_like(w)
    value = prior.backward_complexity(ws, 1e-3)
    fused_grads = [t.grad.clone() for t in ws + params]
    for t in ws + params:
        t.grad = None
    for w in ws:
        w.grad = torch.ones_like(w)
    mu, gamma, log_pi = (t.double() for t in prior.mixture())
    ref = K.mixture_nll_reference(mu, gamma, log_pi, [w.double() for w in ws]) + prior.hyper_prior().double()
    (1e-3 * ref).backward()
    assert float(value) == pytest.approx(ref.item(), rel=1e-6)
    for a, t in zip(fused_grads, ws + params):
        scale = t.grad.abs().max().item()
        assert (a - t.grad).abs().max().item() <= 2e-4 * scale + 1e-7


@pytest.mark.parametrize("state", ["broad", "sharp", "far"])
def test_fused_float32_path_matches_dense(state):
    """The GPU's float32 path, run eagerly on CPU: float64 sums, float32 per weight."""
    J = 16
    mu, gamma, log_pi = {"broad": mixture(J, 16.0, 16.0), "sharp": mixture(J, 1e3, 1e8),
                         "far": mixture(J, 1e5, 1e6, spread=2.0)}[state]
    ws = weights(n=50000, scale=3.0 if state == "far" else 0.15)
    rlogp, rS, rg = dense(mu, gamma, log_pi, ws)
    grads = [torch.full_like(w, 0.25) for w in ws]
    logp, S, made = fused.stats(mu.float(), gamma.float(), log_pi.float(), ws, grads=grads, scale=2.0)
    assert made is None and logp.dtype == torch.float64 and S.dtype == torch.float64
    assert logp.item() == pytest.approx(rlogp.item(), rel=1e-6)
    g = torch.cat([(x.reshape(-1) - 0.25) / 2.0 for x in grads]).double()
    assert (g - rg).abs().max().item() <= 1e-5 * rg.abs().max().item() + 1e-4
    for q in range(3):
        a, b = S[q * J:(q + 1) * J], rS[q * J:(q + 1) * J]
        assert (a - b).abs().max().item() <= 1e-5 * b.abs().max().item() + 1e-9
    _, _, new = fused.stats(mu.float(), gamma.float(), log_pi.float(), ws, new_grads=True)
    torch.testing.assert_close(torch.cat([x.reshape(-1) for x in new]).double(), g, rtol=0, atol=1e-3)


@pytest.mark.parametrize("small", [1 << 20, 5000])
def test_fused_chunks_and_groups_keep_sums_and_gradients(monkeypatch, small):
    """Chunked (bounded memory), small tensors grouped or not: the same sums and gradients."""
    mu, gamma, log_pi = mixture(8, 1e2, 1e4)
    ws = weights(n=20000) + [torch.randn(37) * 0.1, torch.randn(3, 5) * 0.2]
    monkeypatch.setattr(fused, "_SMALL", small)   # 5000: the first tensor alone, the others together
    whole = fused.stats(mu.float(), gamma.float(), log_pi.float(), ws, new_grads=True)
    acc = [torch.ones_like(w) for w in ws]
    monkeypatch.setattr(fused, "_EAGER_CELLS", 8 * 1000)   # chunks of 1000 weights
    parts = fused.stats(mu.float(), gamma.float(), log_pi.float(), ws, grads=acc, scale=0.5)
    assert parts[0].item() == pytest.approx(whole[0].item(), rel=1e-12)
    torch.testing.assert_close(parts[1], whole[1], rtol=1e-10, atol=1e-12)
    for a, g, w in zip(acc, whole[2], ws):
        assert g.shape == w.shape
        torch.testing.assert_close(a, 1.0 + 0.5 * g, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_fused_path_compiled(monkeypatch):
    """The function the GPU runs compiled (torch.compile, here with inductor's CPU backend):
    one graph for every chunk size, in-place gradient update, the eager numbers."""
    monkeypatch.setenv("SWS_FUSED_COMPILE", "all")
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_COMPILED_CHUNK", 7000)
    mu, gamma, log_pi = mixture(16, 1e2, 1e5)
    ws = weights(n=16000)
    acc = [torch.zeros_like(w) for w in ws]
    try:
        logp, S, _ = fused.stats(mu.float(), gamma.float(), log_pi.float(), ws, grads=acc, scale=2.0)
    except Exception as e:  # no working compiler toolchain for inductor on this machine
        pytest.skip(f"torch.compile unavailable here: {e}")
    assert fused._compiled["cpu"] is not None   # it did not fall back to eager
    monkeypatch.setenv("SWS_FUSED_COMPILE", "0")
    monkeypatch.setattr(fused, "_compiled", {})
    ref = [torch.zeros_like(w) for w in ws]
    rlogp, rS, _ = fused.stats(mu.float(), gamma.float(), log_pi.float(), ws, grads=ref, scale=2.0)
    assert logp.item() == pytest.approx(rlogp.item(), rel=1e-8)
    torch.testing.assert_close(S, rS, rtol=1e-6, atol=1e-6)
    for a, b in zip(acc, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


class _NoC:
    def __getattr__(self, name):
        raise AssertionError(f"the C kernel was called ({name}) with tensors it cannot take")


def test_no_device_pointer_reaches_c(monkeypatch):
    """Tensors on a device other than the CPU never reach the C kernel: complexity(),
    backward_complexity() and mixture_nll choose the fused path (shapes only, on "meta")."""
    monkeypatch.setattr(K, "_LIB", _NoC())
    prior = GaussianMixturePrior(PriorConfig()).to("meta")
    ws = [torch.empty(30, 20, device="meta", requires_grad=True)]
    c = prior.complexity(ws)
    assert c.device.type == "meta" and c.shape == ()
    c.backward()
    assert ws[0].grad is not None and ws[0].grad.device.type == "meta"
    assert K._path(torch.zeros(3, device="meta"), ws, None) == "fused"
    assert K._path(torch.zeros(3), [torch.zeros(3, dtype=torch.float64)], None) in ("c", "torch")


def test_paths_without_the_c_kernel(monkeypatch):
    """The build without a compiler: every entry point works on the exact PyTorch path."""
    monkeypatch.setattr(K, "_LIB", None)
    assert not K.kernel_available()
    prior = GaussianMixturePrior(PriorConfig())
    ws = [(torch.randn(500) * 0.1).requires_grad_()]
    prior.complexity(ws).backward()
    ws[0].grad = None
    value = prior.backward_complexity(ws, 1e-2)
    assert torch.is_tensor(value) and value.shape == () and value.dtype == torch.float64
    assert math.isfinite(float(value)) and ws[0].grad is not None
    state = prior._workspace.state_dict()
    K.Workspace().load_state_dict(state)


def test_too_many_components():
    with pytest.raises(ValueError, match="at most 256"):
        K.mixture_nll(torch.zeros(300), torch.zeros(300), torch.zeros(300), [torch.zeros(3)])


@needs_c
def test_copies_of_a_prior_own_their_workspace():
    """copy.deepcopy and pickling (torch.save) of a prior that has run: each copy gets its own
    C workspace in the same state (never the handle, which both would free), and the next call
    gives the original's bits."""
    import copy
    import io
    import gc
    g = torch.Generator().manual_seed(3)
    ws = [torch.randn(50001, generator=g) * 0.05]
    prior = GaussianMixturePrior(PriorConfig(n_components=8), weights=ws)
    for _ in range(5):                       # mid-plan (a plan every 8 calls)
        prior.complexity(ws)
    twin = copy.deepcopy(prior)
    buf = io.BytesIO()
    torch.save(prior, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert twin._workspace._handle != prior._workspace._handle
    expected = [prior.complexity(ws).item() for _ in range(4)]
    del prior
    gc.collect()                             # the original's workspace freed: the copies still run
    assert [twin.complexity(ws).item() for _ in range(4)] == expected
    assert [loaded.complexity(ws).item() for _ in range(4)] == expected


def _bound_setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [(torch.randn(300, 50, generator=g) * 0.1).requires_grad_(),
          (torch.randn(70, generator=g) * 0.2).requires_grad_()]
    prior = GaussianMixturePrior(PriorConfig(), weights=ws)
    return prior, ws


def _grads_of(prior, ws, scale=1e-3, **kw):
    """The gradients and C of one call from fresh gradients (all .grad None first)."""
    for t in ws + list(prior.parameters()):
        t.grad = None
    c = prior.backward_complexity(ws, scale, **kw)
    return [t.grad.clone() for t in ws + list(prior.parameters())], c


@needs_c
def test_the_bound_call_follows_changed_tensors():
    """The C call is bound to its tensors once; a tensor moved to new storage, another list of
    weights or a parameter frozen is seen at the next call: the bits of a copy that never bound."""
    import copy
    prior, ws = _bound_setup()
    _grads_of(prior, ws)
    twin, twin_ws = copy.deepcopy(prior), [w.detach().clone().requires_grad_() for w in ws]
    assert twin._workspace.binding is None
    for p, w in ((prior, ws), (twin, twin_ws)):
        with torch.no_grad():                # new storage for a mixture parameter and a weight
            p.means.data = p.means.data + 0.01
            w[0].data = w[0].data * 1.5
    a, ca = _grads_of(prior, ws)
    b, cb = _grads_of(twin, twin_ws)
    assert float(ca) == float(cb) and all(torch.equal(x, y) for x, y in zip(a, b))
    other = [w.detach().clone().requires_grad_() for w in reversed(ws)]   # another list: bound again
    a, _ = _grads_of(prior, other)
    assert a[0].shape == other[0].shape and prior._workspace.binding.weights[0] is other[0]
    prior.means.requires_grad_(False)          # frozen: no gradient for it
    for t in ws + list(prior.parameters()):
        t.grad = None
    prior.backward_complexity(ws, 1e-3)
    assert prior.means.grad is None and prior.log_precisions.grad is not None


@needs_c
def test_mixture_gradients_are_set_when_none_and_added_otherwise():
    """A mixture parameter's .grad None (the optimiser's zero_grad) gets the term itself, step after
    step (its buffer is reused, never summed into); a .grad present gets it added."""
    prior, ws = _bound_setup()
    first, _ = _grads_of(prior, ws)
    again, _ = _grads_of(prior, ws)            # the same state: the same gradients, not twice them
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    for t in ws + list(prior.parameters()):
        t.grad = torch.ones_like(t)
    prior.backward_complexity(ws, 1e-3)
    for t, g in zip(ws + list(prior.parameters()), first):
        assert torch.equal(t.grad, torch.ones_like(t) + g)


@needs_c
def test_the_running_sum_gets_c_times_the_factor():
    prior, ws = _bound_setup()
    _, c = _grads_of(prior, ws)
    acc = torch.tensor(2.5, dtype=torch.float64)
    _, got = _grads_of(prior, ws, acc=acc, factor=256)
    assert isinstance(got, float) and got == float(c)
    assert acc.item() == 2.5 + float(c) * 256      # as the loop's `cx_sum += complexity * len(y)`
    acc32 = torch.tensor(0.0)                      # not a float64 sum: added by torch
    _, got = _grads_of(prior, ws, acc=acc32, factor=2)
    assert acc32.item() == pytest.approx(2 * float(c))


class _Counting:
    """Stands in for the extension module, counting the bound calls that ran in C."""

    def __init__(self, ext):
        self.ext, self.ran = ext, 0

    def bind(self, *a):
        return self.ext.bind(*a)

    def train_step(self, *a):
        c = self.ext.train_step(*a)
        self.ran += c is not None
        return c


def _steps(prior, ws, events):
    """Training-loop calls (gradients present, the mixture's set to None as zero_grad does, a
    running sum), with the tensors changed on the way; every result, for a bitwise comparison."""
    g = torch.Generator().manual_seed(5)
    acc = torch.zeros((), dtype=torch.float64)
    out = []
    for step in range(12):
        ev = events.get(step)
        if ev == "storage":
            ws[0].data = ws[0].data.clone()
        elif ev == "acc":
            acc = torch.full((), 1.5, dtype=torch.float64)
        elif ev == "frozen":
            prior.means.requires_grad_(False)
        elif ev == "thawed":
            prior.means.requires_grad_(True)
        for w in ws:
            w.grad = torch.randn(w.shape, generator=g)
        if ev == "strided":
            ws[0].grad = torch.randn(ws[0].shape[::-1], generator=g).t()
        for p in prior.parameters():
            p.grad = None if step % 3 else torch.ones_like(p)
        c = prior.backward_complexity(ws, 1e-3, acc=acc, factor=64)
        out.append((float(c), acc.item(), [t.grad.clone() if t.grad is not None else None
                                           for t in ws + list(prior.parameters())]))
        with torch.no_grad():                # the optimiser's in-place step
            for w in ws:
                w.add_(w.grad, alpha=-1e-2)
            for p in prior.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-1e-3)
    return out


@needs_c
def test_the_step_bound_in_c_matches_the_python_path(monkeypatch):
    """_kernel.train_step (the training loop's call after the first) against the same calls through
    the Python path around ctypes: the same bits, step after step, through new storage, another
    running sum, a gradient with strides and a parameter frozen and thawed (each sends one call
    back to Python, which binds again)."""
    import copy
    if K._EXT is None:
        pytest.skip("an older build of the kernel")
    prior, ws = _bound_setup(3)
    twin, twin_ws = copy.deepcopy(prior), [w.detach().clone().requires_grad_() for w in ws]
    events = {3: "storage", 5: "acc", 7: "strided", 8: "frozen", 10: "thawed"}
    counting = _Counting(K._EXT)
    monkeypatch.setattr(K, "_EXT", counting)
    fast = _steps(prior, ws, events)
    monkeypatch.setattr(K, "_EXT", None)
    slow = _steps(twin, twin_ws, events)
    for (ca, sa, ga), (cb, sb, gb) in zip(fast, slow):
        assert ca == cb and sa == sb
        assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(ga, gb))
    assert counting.ran >= 5                 # the calls between the events ran in C


@needs_c
def test_the_step_bound_in_c_leaves_a_foreign_library_alone(monkeypatch):
    """While the prior runs on another build of the kernel (the benchmarks swap one in), the bound
    call of this one is never used."""
    if K._EXT is None:
        pytest.skip("an older build of the kernel")
    prior, ws = _bound_setup()
    for w in ws:
        w.grad = torch.zeros_like(w)
    prior.backward_complexity(ws, 1e-3)
    assert prior._workspace.binding.capsule is not None
    counting = _Counting(K._EXT)
    monkeypatch.setattr(K, "_EXT", counting)
    monkeypatch.setattr(K, "_OWN", object())
    prior.backward_complexity(ws, 1e-3)
    assert counting.ran == 0


@needs_c
def test_a_call_on_fewer_threads_leaves_no_moments_behind():
    """Two threads, then one, then two again: the third call as after two-thread calls only (the
    second thread's moments of the first call cleared though the second call did not use it)."""
    g = torch.Generator().manual_seed(11)
    mu, gamma, log_pi = mixture(9, 1e2, 1e4)
    ws = [torch.randn(120000, generator=g) * 0.1]
    saved = torch.get_num_threads()
    results = []
    try:
        for threads in ((2, 1, 2), (2, 2, 2)):
            wsp = K.Workspace()
            for t in threads:
                torch.set_num_threads(t)
                out = K._stats_c(mu, gamma, log_pi, ws, True, wsp)
            results.append(out)
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(results[0], results[1]):
        for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            assert torch.equal(x, y)


_DIGEST_PLAN = """
import hashlib, torch
from sws.prior import kernel as K
g = torch.Generator().manual_seed({seed})
J = {J}
mu = torch.cat([torch.zeros(1), torch.linspace(-0.5, 0.5, J - 1)]).double()
gamma = (torch.rand(J, generator=g) * 6.0 + {sharp}).double()
log_pi = torch.log_softmax(torch.randn(J, generator=g), 0).double()
w = torch.randn(80001, generator=g) * 0.2
w[: 40000] *= 0.02                      # most weights near zero, as late in retraining
wsp = K.Workspace()
h = hashlib.sha256()
for _ in range(9):                      # the first plan and the one after the counts of a call
    K._stats_c(mu, gamma, log_pi, [w], False, wsp)
    s = wsp.state_dict()
    h.update(repr([s[k] for k in ("G", "D", "L", "E", "grid_lo", "grid_h")]).encode())
    h.update(s["ptr"].numpy().tobytes() + s["idx"].numpy().tobytes())
print(h.hexdigest(), s["L"])
"""


@needs_c
@pytest.mark.parametrize("J,sharp,seed", [(5, 4.0, 0), (17, 8.0, 1), (40, 10.0, 2)])
def test_the_plan_breadth_first_is_the_plan_depth_first(J, sharp, seed):
    """The plan with the expansions batched level by level (AVX-512) and refine's depth-first
    recursion (the other instruction sets): the same geometry, leaf for leaf."""
    code = _DIGEST_PLAN.format(J=J, sharp=sharp, seed=seed)
    runs = [_run_subprocess(code, env).split() for env in ({}, {"SWS_KERNEL_NO_AVX512": "1"})]
    assert runs[0][0] == runs[1][0]
    assert int(runs[0][1]) > 8

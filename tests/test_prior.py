"""The mixture prior against trusted references (scipy / dense autograd)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

from sws.config import PretrainConfig, PriorConfig, lr_factor, retrain_config
from sws.errors import ConfigError
from sws.prior.kernel import Workspace, mixture_nll, mixture_nll_reference
from sws.prior import GaussianMixturePrior


def scipy_log_prob(w, prior):
    mu, gamma, log_pi = (t.detach().double().numpy() for t in prior.mixture())
    sd = np.exp(-0.5 * gamma)
    return logsumexp(log_pi + norm.logpdf(w[:, None], loc=mu, scale=sd), axis=1)


def make_prior(J=16, gammas=None, seed=0):
    torch.manual_seed(seed)
    prior = GaussianMixturePrior(PriorConfig(n_components=J))
    with torch.no_grad():
        prior.means.add_(0.01 * torch.randn(J - 1))
        prior.mixing_logits.copy_(torch.randn(J - 1))
        if gammas is not None:
            prior.log_precisions.copy_(gammas)
    return prior


@pytest.mark.parametrize("max_precision", [1e2, 1e4, 1e8])
def test_log_prob_matches_scipy(max_precision):
    J = 16
    prior = make_prior(J, torch.linspace(math.log(4.0), math.log(max_precision), J))
    rng = np.random.default_rng(1)
    w = np.concatenate([rng.normal(0, 0.1, 5000), rng.uniform(-3, 3, 500), [0.0, 1e-6, -5.0, 7.5]])
    ours = prior.log_prob(torch.from_numpy(w)).detach().numpy()
    ref = scipy_log_prob(w, prior)
    err = np.abs(ours - ref) / np.maximum(1, np.abs(ref))
    assert err.max() <= 1e-6, f"max error {err.max():.3g} at w = {w[err.argmax()]}"


@pytest.mark.parametrize("state", ["initial", "sharp", "far"])
@pytest.mark.parametrize("use_kernel", [True, False])
def test_summed_nll_and_gradients_match_dense_reference(state, use_kernel):
    J = 16
    gammas = {"initial": None, "sharp": torch.linspace(math.log(1e2), math.log(1e8), J),
              "far": torch.full((J,), math.log(1e6))}[state]
    prior = make_prior(J, gammas)
    torch.manual_seed(2)
    scale = 3.0 if state == "far" else 0.1
    ws = [(torch.randn(200, 300) * scale).requires_grad_(), (torch.randn(77) * scale).requires_grad_()]
    mu, gamma, log_pi = prior.mixture()
    c = mixture_nll(mu, gamma, log_pi, ws, Workspace(), use_kernel=use_kernel)
    grads = torch.autograd.grad(c, [prior.means, prior.log_precisions, prior.mixing_logits, *ws])
    ref_c = mixture_nll_reference(*(t.double() for t in prior.mixture()), [w.double() for w in ws])
    ref = torch.autograd.grad(ref_c, [prior.means, prior.log_precisions, prior.mixing_logits, *ws])
    assert c.item() == pytest.approx(ref_c.item(), rel=1e-5)
    for g, r in zip(grads, ref):
        # the kernel's cubic leaves are accurate to 1e-4 relative (SMOOTH in _kernel.c)
        tol = 2e-4 * r.abs().max().item() + 1e-6
        assert (g.double() - r).abs().max().item() <= tol


def test_gradients_reach_every_learned_parameter():
    prior = make_prior()
    w = (torch.randn(1000) * 0.2).requires_grad_()
    prior.complexity([w]).backward()
    for p in (prior.means, prior.log_precisions, prior.mixing_logits, w):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_fused_backward_equals_autograd():
    prior = make_prior(gammas=torch.linspace(3, 9, 16))
    torch.manual_seed(3)
    ws = [(torch.randn(300, 100) * 0.05).requires_grad_(), (torch.randn(100) * 0.1).requires_grad_()]
    params = [prior.means, prior.log_precisions, prior.mixing_logits]
    for w in ws:
        w.grad = torch.ones_like(w)
    value = prior.backward_complexity(ws, 1e-3)
    fused = [t.grad.clone() for t in ws + params]
    for t in ws + params:
        t.grad = None
    for w in ws:
        w.grad = torch.ones_like(w)
    c = prior.complexity(ws)
    (1e-3 * c).backward()
    assert torch.is_tensor(value) and value.dim() == 0 and value.dtype == torch.float64
    assert float(value) == pytest.approx(c.item(), rel=1e-6)
    for a, t in zip(fused, ws + params):
        torch.testing.assert_close(a, t.grad, rtol=1e-5, atol=1e-7)


def test_hyper_prior_is_negative_log_gamma_density():
    prior = make_prior(gammas=torch.linspace(1, 8, 16))
    lam = prior.log_precisions.detach().double().exp()
    alpha, beta = prior.alpha.double(), prior.beta.double()
    # -log Gamma(lam | alpha, beta) in the gamma = log lam parametrisation, constants dropped
    expected = ((1 - alpha) * lam.log() + beta * lam).sum().item()
    assert prior.hyper_prior().item() == pytest.approx(expected, rel=1e-6)
    assert prior.alpha[0] == 5000 and prior.beta[0] == 2 and prior.alpha[1] == 250


def test_mixture_proportions_and_initialisations():
    prior = GaussianMixturePrior(PriorConfig())
    mu, gamma, log_pi = prior.mixture()
    assert mu[0] == 0 and log_pi.exp().sum().item() == pytest.approx(1.0)
    assert log_pi[0].exp().item() == pytest.approx(0.99)
    assert mu[1:].tolist() == pytest.approx(np.linspace(-0.6, 0.6, 15).tolist(), abs=1e-6)
    assert torch.allclose(gamma, torch.full((16,), -2 * math.log(0.25)))
    w = torch.tensor([-0.3, 0.0, 0.9])
    spread = GaussianMixturePrior(PriorConfig(init="range"), [w])
    assert spread.means.min().item() == pytest.approx(-0.3) and spread.means.max().item() == pytest.approx(0.9)


def test_learned_pi0_with_beta_prior():
    from sws.config import PriorConfig
    prior = GaussianMixturePrior(PriorConfig(learn_pi0=True, pi0_a=50.0, pi0_b=2.0, pi0=0.9))
    assert isinstance(prior.pi0_logit, torch.nn.Parameter)
    assert prior.pi0.item() == pytest.approx(0.9)
    expected_beta = -(49 * math.log(0.9) + 1 * math.log(0.1))
    fixed = GaussianMixturePrior(PriorConfig(pi0=0.9))
    # float32 sums of magnitude ~1e4: compare to 5e-3
    assert prior.hyper_prior().item() - fixed.hyper_prior().item() == pytest.approx(expected_beta, abs=5e-3)
    w = (torch.randn(500) * 0.1).requires_grad_()
    prior.complexity([w]).backward()
    assert prior.pi0_logit.grad is not None and prior.pi0_logit.grad.abs() > 0
    assert not isinstance(fixed.pi0_logit, torch.nn.Parameter)  # presets keep pi0 fixed


def test_lr_schedules():
    assert [lr_factor("constant", d, 10) for d in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert [lr_factor("cosine", d, 10) for d in (0, 5, 10, 12)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    with pytest.raises(ConfigError, match="lr_schedule must be one of constant, cosine"):
        retrain_config(lr_schedule="step")
    with pytest.raises(ConfigError, match="lr_schedule must be one of"):
        PretrainConfig(lr_schedule="linear").validate()


def test_tau_schedules():
    from sws.config import retrain_config
    assert retrain_config().tau_at(3.0) == 0.003
    lin = retrain_config(tau=0.01, tau_schedule="linear", tau_start=0.0, tau_warmup_epochs=10)
    assert [lin.tau_at(e) for e in (0, 5, 10, 20)] == pytest.approx([0.0, 0.005, 0.01, 0.01])
    exp = retrain_config(tau=0.01, tau_schedule="exponential", tau_start=1e-4, tau_warmup_epochs=2)
    assert exp.tau_at(1) == pytest.approx(1e-3) and exp.tau_at(5) == pytest.approx(0.01)
    from sws.errors import ConfigError
    with pytest.raises(ConfigError, match="exponential tau warm-up needs tau_start > 0"):
        retrain_config(tau_schedule="exponential", tau_warmup_epochs=2)
    with pytest.raises(ConfigError, match="tau_schedule must be"):
        retrain_config(tau_schedule="cosine")


def test_presets_keep_their_published_settings():
    from sws.config import retrain_config
    tut, paper = retrain_config("tutorial"), retrain_config("paper")
    assert (tut.tau, tut.epochs, tut.prior.n_components, tut.prior.pi0) == (0.003, 30, 16, 0.99)
    assert (tut.lr_weights, tut.lr_means, tut.lr_log_precisions, tut.lr_mixing) == (5e-4, 1e-4, 3e-3, 3e-3)
    assert (paper.prior.n_components, paper.prior.pi0, paper.lr_means, paper.lr_mixing) == (17, 0.999, 5e-4, 5e-4)
    for cfg in (tut, paper):
        assert cfg.tau_schedule == "constant" and not cfg.prior.learn_pi0


def test_sparse_gradients_get_the_dense_prior_gradient():
    """A sparse ``.grad`` (nn.Embedding(sparse=True)) is made dense and gets the prior's gradient,
    the same bits as a dense one, on the first call (the Python path) and on the later ones
    (the C call, which hands such a gradient back to the Python path)."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 8, sparse=True)
    dense = torch.nn.Embedding(50, 8)
    dense.weight.data.copy_(emb.weight.data)
    priors = [GaussianMixturePrior(PriorConfig(n_components=6, init_sigma=0.1), [m.weight]) for m in (emb, dense)]
    priors[1].load_state_dict(priors[0].state_dict())
    idx = torch.randint(0, 50, (20,))
    for _ in range(3):
        results = []
        for m, prior in zip((emb, dense), priors):
            m.weight.grad = None
            for p in prior.parameters():
                p.grad = None
            m(idx).sum().backward()
            assert m.weight.grad.is_sparse == (m is emb)
            c = prior.backward_complexity([m.weight], 1e-3)
            results.append((float(c), m.weight.grad.clone(), prior.means.grad.clone()))
        (c0, g0, p0), (c1, g1, p1) = results
        assert not g0.is_sparse and c0 == c1 and torch.equal(g0, g1) and torch.equal(p0, p1)

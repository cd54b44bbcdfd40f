"""Distillation from the pretrained network during retraining (``RetrainConfig.distill``)."""

import pytest
import torch
import torch.nn.functional as F

import sws
from sws.method.batches import distillation_loss
from sws.method.loop import retrain, retrain_optimizer
from test_snap import pretrained, toy   # the same toy task and pretrained net


SETTINGS = dict(epochs=3, batch_size=64, tau=0.05, lr_weights=2e-3, init_sigma=0.05, max_error_increase=5.0,
                patience=0, finetune_epochs=0, snap_epochs=1)


def test_distillation_loss_is_the_tempered_kl_times_t_squared():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    p, q = F.softmax(t / 3, -1), F.log_softmax(s / 3, -1)
    want = 9 * (p * (p.log() - q)).sum(-1).mean()
    assert distillation_loss(s, t, 3.0) == pytest.approx(want.item(), rel=1e-5)
    assert distillation_loss(t, t, 3.0).abs() < 1e-6
    # sequence outputs: every position counts once
    seq_s, seq_t = s.reshape(2, 3, 5), t.reshape(2, 3, 5)
    assert distillation_loss(seq_s, seq_t, 3.0) == pytest.approx(want.item(), rel=1e-5)


def test_retraining_learns_from_a_frozen_teacher():
    model = pretrained()
    teacher = pretrained()
    teacher.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in teacher.parameters()]
    cfg = sws.retrain_config("tutorial", distill=0.7, **{k: v for k, v in SETTINGS.items()
                                                         if k not in ("max_error_increase", "patience",
                                                                      "finetune_epochs", "init_sigma")})
    prior = sws.GaussianMixturePrior(cfg.prior, list(model.parameters()))
    hist = retrain(model, prior, toy(), cfg, quiet=True, teacher=teacher)
    assert len(hist) == 4            # 3 epochs, then 1 through the snap
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert all(p.grad is None for p in teacher.parameters())
    assert not torch.equal(next(model.parameters()), before[0])


def test_distill_changes_the_training_and_the_run_completes():
    _, plain = sws.compress(pretrained(), toy(), toy(seed=1), **SETTINGS)
    _, soft = sws.compress(pretrained(), toy(), toy(seed=1), distill=0.5, **SETTINGS)
    assert [r["train_loss"] for r in plain.history] != [r["train_loss"] for r in soft.history]
    assert soft.budget["status"] in ("within", "over")
    assert soft.metrics["quantized_error"] <= 1.0


def test_distill_without_a_teacher_is_refused_and_bad_values_are_named():
    model = pretrained()
    cfg = sws.retrain_config("tutorial", distill=0.5, epochs=1)
    prior = sws.GaussianMixturePrior(cfg.prior, list(model.parameters()))
    with pytest.raises(sws.ConfigError, match="teacher"):
        sws.method.loop.fit(model, toy(), cfg, retrain_optimizer(model, prior, cfg), prior=prior,
                            covered=list(model.parameters()), quiet=True)
    with pytest.raises(sws.ConfigError, match="distill must be a weight from 0 to 1"):
        sws.retrain_config("tutorial", distill=1.5)
    with pytest.raises(sws.ConfigError, match="distill_temperature"):
        sws.retrain_config("tutorial", distill_temperature=0)

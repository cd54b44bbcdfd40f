"""Training loops: plain pretraining and retraining with the mixture prior (SPEC sections 1, 3).

Each loop returns its history, a list of per-epoch records (plain dicts).
Progress display and callbacks are passed in; nothing here writes files.

Both loops can be stopped and resumed bit for bit: they hand their complete
state (``sws.method.state``) to ``on_state`` before the first step and after every
epoch, and on SIGINT/SIGTERM after the step in progress, then raise
``TrainingInterrupted``; given that state as ``resume`` they continue exactly
where it was taken.  A divergence guard stops a loop with ``DivergenceError``
before a non-finite loss reaches the weights, and at the end of an epoch whose
prior has exploding precisions or components collapsed onto each other.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sws.config import PretrainConfig, RetrainConfig, lr_factor
from sws.zoo.mnist import Dataset, batches
from sws.errors import DivergenceError, TrainingInterrupted
from sws.zoo.models import covered_parameters
from sws.prior import GaussianMixturePrior
from sws.method.state import Position, capture, restore

__all__ = ["evaluate", "pretrain", "retrain", "retrain_optimizer", "MAX_LOG_PRECISION",
           "COLLAPSE_KL"]

MAX_LOG_PRECISION = math.log(1e12)  # a component narrower than sd 1e-6 has run away
COLLAPSE_KL = 1e-8  # two weighty components this close (KL both ways) have become one


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, batch_size: int = 2000) -> dict:
    """Accuracy and mean cross-entropy of ``model`` on ``data``."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for x, y in batches(data, batch_size):
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    model.train(was_training)
    n = max(len(data), 1)
    return {"accuracy": correct / n, "error": 1 - correct / n, "cross_entropy": loss / n}


def _bar(total, desc, quiet):
    return tqdm(total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


def _eval_sets(model, val, test):
    rec = {}
    if val is not None:
        rec.update({f"val_{k}": v for k, v in evaluate(model, val).items()})
    if test is not None:
        rec.update({f"test_{k}": v for k, v in evaluate(model, test).items()})
    return rec


class _Signals:
    """Turn the first SIGINT/SIGTERM into a flag the loop checks between steps.

    A second signal stops at once (KeyboardInterrupt).  Outside the main thread
    signals cannot be caught, and nothing is installed.
    """

    def __init__(self):
        self.signum, self.old = None, {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)


class _Loop:
    """What both loops share: start or resume, save state, stop on a signal."""

    def __init__(self, stage, cfg, model, opt, prior, resume, on_state):
        self.stage, self.cfg, self.model, self.opt, self.prior = stage, cfg, model, opt, prior
        self.on_state, self.saved = on_state, None
        self.base_lrs = [g["lr"] for g in opt.param_groups]  # from cfg: a resumed state holds decayed ones
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        if resume is None:
            self.pos = Position(1, 0, self.gen.get_state(), {})
            self.history = []
            self.save()
        else:
            self.pos, self.history = restore(*resume, stage, model, opt, prior)
            self.gen.set_state(self.pos.data_rng)
            self.saved = self._where()

    def save(self):
        if self.on_state is not None:
            self.on_state(*capture(self.stage, self.cfg, self.pos, self.history, self.model,
                                   self.opt, self.prior))
            self.saved = self._where()

    def _where(self):
        e, s = self.pos.epoch, self.pos.step
        if s:
            return f"epoch {e}, step {s}"
        return "before training" if e == 1 else f"after epoch {e - 1}"

    def interrupted(self, signals: _Signals, step: int, sums: dict):
        """After a step: on a pending signal, save the state mid-epoch and stop."""
        if signals.signum is None:
            return
        self.pos = Position(self.pos.epoch, step, self.pos.data_rng, sums)
        self.save()
        name = signal.Signals(signals.signum).name
        raise TrainingInterrupted(f"{self.stage} stopped by {name} at epoch {self.pos.epoch}, "
                                  f"step {step}; its state is saved", signals.signum)

    def batches(self, train: Dataset, batch_size: int, skip: int):
        """The epoch's (step, x, y), drawn in the seeded order, the first ``skip``
        (already done before a resume) left out."""
        for step, (x, y) in enumerate(batches(train, batch_size, self.gen)):
            if step >= skip:
                yield step, x, y

    def schedule_lr(self, epoch: int, step: int, steps: int) -> float:
        """Set the optimiser's rates for this step per ``cfg.lr_schedule``; the factor."""
        factor = lr_factor(self.cfg.lr_schedule, (epoch - 1) * steps + step, self.cfg.epochs * steps)
        for group, base in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return factor

    def end_epoch(self, rec: dict, on_epoch, signals: _Signals):
        self.history.append(rec)
        if on_epoch:
            on_epoch(rec)
        self.pos = Position(self.pos.epoch + 1, 0, self.gen.get_state(), {})
        self.save()
        if signals.signum is not None:
            name = signal.Signals(signals.signum).name
            raise TrainingInterrupted(f"{self.stage} stopped by {name} after epoch {self.pos.epoch - 1}; "
                                      "its state is saved", signals.signum)

    def diverged(self, what: str, epoch: int, step: int, hint: str):
        kept = f" (last good state kept: {self.saved})" if self.saved else ""
        raise DivergenceError(f"{self.stage} diverged at epoch {epoch}, step {step}: {what}; "
                              f"{hint}{kept}")


def pretrain(model: torch.nn.Module, train: Dataset, cfg: PretrainConfig,
             val: Dataset | None = None, test: Dataset | None = None, quiet: bool = False,
             on_epoch: Callable[[dict], None] | None = None, *, resume: tuple[dict, dict] | None = None,
             on_state: Callable[[dict, dict], None] | None = None, guard: bool = True) -> list[dict]:
    """Train with Adam and cross-entropy only.

    Args:
      on_epoch: called with each epoch's record.
      resume: (tensors, meta) from ``on_state``: continue from there.
      on_state: called with (tensors, meta), the loop's complete state, before
        the first step, after every epoch and when a signal stops the loop.
      guard: stop with ``DivergenceError`` on a non-finite loss.
    Returns:
      The history: every epoch's record, those before a resume included.
    """
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loop = _Loop("pretrain", cfg, model, opt, None, resume, on_state)
    steps = -(-len(train) // cfg.batch_size)
    with _Signals() as signals:
        for epoch in range(loop.pos.epoch, cfg.epochs + 1):
            model.train()
            skip, sums = loop.pos.step, dict(loop.pos.sums)
            total, seen = sums.get("ce", 0.0), sums.get("seen", 0)
            t0 = time.perf_counter() - sums.get("seconds", 0.0)
            with _bar(steps, f"pretrain {epoch}/{cfg.epochs}", quiet) as bar:
                bar.update(skip)
                for step, x, y in loop.batches(train, cfg.batch_size, skip):
                    loss = F.cross_entropy(model(x), y)
                    value = loss.item()
                    if guard and not math.isfinite(value):
                        loop.diverged(f"cross-entropy is {value}", epoch, step + 1,
                                      f"lower --pretrain-lr (now {cfg.lr:g})")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    loop.schedule_lr(epoch, step, steps)
                    opt.step()
                    total += value * len(y)
                    seen += len(y)
                    bar.update()
                    loop.interrupted(signals, step + 1, {"ce": total, "seen": seen,
                                                         "seconds": time.perf_counter() - t0})
            rec = {"stage": "pretrain", "epoch": epoch, "seconds": time.perf_counter() - t0,
                   "lr_scale": lr_factor(cfg.lr_schedule, epoch * steps - 1, cfg.epochs * steps),
                   "train_cross_entropy": total / seen, **_eval_sets(model, val, test)}
            loop.end_epoch(rec, on_epoch, signals)
    return loop.history


def retrain_optimizer(model, prior: GaussianMixturePrior, cfg: RetrainConfig) -> torch.optim.Adam:
    """Adam with the four learning rates of the tutorial: weights, means, log-precisions, logits."""
    mixing = [prior.mixing_logits]
    if isinstance(prior.pi0_logit, torch.nn.Parameter):  # learned pi0 (Beta prior)
        mixing.append(prior.pi0_logit)
    return torch.optim.Adam([
        {"params": list(model.parameters()), "lr": cfg.lr_weights},
        {"params": [prior.means], "lr": cfg.lr_means},
        {"params": [prior.log_precisions], "lr": cfg.lr_log_precisions},
        {"params": mixing, "lr": cfg.lr_mixing},
    ])


def _check_prior(loop: _Loop, prior: GaussianMixturePrior, epoch: int, step: int, cfg: RetrainConfig):
    """End-of-epoch guard: exploding precisions, weighty components collapsed onto each other."""
    from sws.prior.merge import kl_divergence
    with torch.no_grad():
        mu, gamma, log_pi = (t.detach().double() for t in prior.mixture())
        if not (torch.isfinite(mu).all() and torch.isfinite(gamma).all() and torch.isfinite(log_pi).all()):
            loop.diverged("the prior's parameters are not finite", epoch, step,
                          f"lower --lr-log-precisions (now {cfg.lr_log_precisions:g}) or --tau "
                          f"(now {cfg.tau:g})")
        j = int(gamma.argmax())
        if gamma[j] > MAX_LOG_PRECISION:
            loop.diverged(f"component {j}'s precision exploded to {gamma[j].exp().item():.3g} "
                          f"(sd {(-0.5 * gamma[j]).exp().item():.2g})", epoch, step,
                          f"lower --lr-log-precisions (now {cfg.lr_log_precisions:g}) or --tau "
                          f"(now {cfg.tau:g})")
        pi = log_pi.exp()
        J = pi.numel()
        # non-zero components with mass (the zero component starts where linspace puts a mean)
        heavy = [j for j in (pi >= 0.5 * (1 - pi[0]) / max(J - 1, 1)).nonzero().flatten().tolist() if j]
        for a in range(len(heavy)):
            for b in range(a + 1, len(heavy)):
                i, k = heavy[a], heavy[b]
                kl = max(kl_divergence(mu[i], gamma[i], mu[k], gamma[k]).item(),
                         kl_divergence(mu[k], gamma[k], mu[i], gamma[i]).item())
                if kl < COLLAPSE_KL:
                    loop.diverged(f"components {i} and {k} collapsed onto each other (mean "
                                  f"{mu[i].item():.4g}, KL {kl:.2g})", epoch, step,
                                  f"lower --lr-means (now {cfg.lr_means:g}) or use fewer --components "
                                  f"(now {J})")


def retrain(model: torch.nn.Module, prior: GaussianMixturePrior, train: Dataset,
            cfg: RetrainConfig, val: Dataset | None = None, test: Dataset | None = None,
            quiet: bool = False, on_epoch: Callable[[dict], None] | None = None, *,
            resume: tuple[dict, dict] | None = None,
            on_state: Callable[[dict, dict], None] | None = None, guard: bool = True) -> list[dict]:
    """Retrain with loss = CE + (tau / N) * C(weights), C the prior's complexity term.

    tau follows ``cfg.tau_schedule`` step by step; each epoch's record holds
    the value at its last step.  ``resume``, ``on_state`` and ``guard`` as in
    ``pretrain``; the guard also checks the prior after every epoch.
    """
    covered = list(covered_parameters(model, cfg.prior.cover).values())
    opt = retrain_optimizer(model, prior, cfg)
    loop = _Loop("retrain", cfg, model, opt, prior, resume, on_state)
    steps = -(-len(train) // cfg.batch_size)
    with _Signals() as signals:
        for epoch in range(loop.pos.epoch, cfg.epochs + 1):
            model.train()
            skip, sums = loop.pos.step, dict(loop.pos.sums)
            ce_sum, cx_sum, seen = sums.get("ce", 0.0), sums.get("complexity", 0.0), sums.get("seen", 0)
            t0 = time.perf_counter() - sums.get("seconds", 0.0)
            with _bar(steps, f"retrain {epoch}/{cfg.epochs}", quiet) as bar:
                bar.update(skip)
                for step, x, y in loop.batches(train, cfg.batch_size, skip):
                    tau = cfg.tau_at(epoch - 1 + step / steps)
                    scale = tau / len(train)
                    ce = F.cross_entropy(model(x), y)
                    ce_value = ce.item()
                    opt.zero_grad(set_to_none=True)
                    ce.backward()
                    # adds (tau / N) dC/dp to every gradient: the loss CE + tau/N C
                    complexity = prior.backward_complexity(covered, scale)
                    if guard and not (math.isfinite(ce_value) and math.isfinite(complexity)):
                        what = (f"cross-entropy is {ce_value}" if not math.isfinite(ce_value)
                                else f"the prior's complexity term is {complexity}")
                        loop.diverged(what, epoch, step + 1,
                                      f"lower --lr-weights (now {cfg.lr_weights:g}), "
                                      f"--lr-log-precisions (now {cfg.lr_log_precisions:g}) "
                                      f"or --tau (now {cfg.tau:g})")
                    loop.schedule_lr(epoch, step, steps)
                    opt.step()
                    ce_sum += ce_value * len(y)
                    cx_sum += complexity * len(y)
                    seen += len(y)
                    bar.update()
                    if not bar.disable:
                        bar.set_postfix(ce=f"{ce_value:.3f}", complexity=f"{complexity:.3g}",
                                        refresh=False)
                    loop.interrupted(signals, step + 1, {"ce": ce_sum, "complexity": cx_sum,
                                                         "seen": seen, "tau": tau,
                                                         "seconds": time.perf_counter() - t0})
            seconds = time.perf_counter() - t0
            tau = cfg.tau_at(epoch - 1 + (steps - 1) / steps)
            if guard:
                _check_prior(loop, prior, epoch, steps, cfg)
            with torch.no_grad():
                flat = torch.cat([w.detach().reshape(-1) for w in covered])
                mu, gamma, _ = prior.mixture()
                near_zero = (flat.abs() < 2.0 * torch.exp(-0.5 * gamma[0])).float().mean().item()
            rec = {"stage": "retrain", "epoch": epoch, "seconds": seconds, "tau": tau,
                   "lr_scale": lr_factor(cfg.lr_schedule, epoch * steps - 1, cfg.epochs * steps),
                   "train_cross_entropy": ce_sum / seen, "complexity": cx_sum / seen,
                   "share_within_2sd_of_zero": near_zero, "prior": prior.summary(),
                   **_eval_sets(model, val, test)}
            loop.end_epoch(rec, on_epoch, signals)
    return loop.history

"""The training loop: pretraining (data term only) and retraining with the prior, in one place.

Retraining minimises (paper section 3, Eq. 3; SPEC section 1)

    L = data loss + (tau / N) * C,    C = -sum_i log p(w_i) + hyper-prior terms,

with Adam and one learning rate per parameter group (SPEC section 3);
pretraining is the same loop without the prior.  ``fit`` runs either over any
``nn.Module``, any device, any loss, in one process or several (DDP), and owns
what every entry point shares: the seeded batch order, the tau and
learning-rate schedules (per step), the divergence guard, SIGINT/SIGTERM,
bit-exact resumption, the progress bar and the per-epoch records.

State: ``fit`` hands its complete state (``sws.method.state``) to ``on_state``
before the first step, after every epoch and, on SIGINT/SIGTERM, after the
step in progress (then raises ``TrainingInterrupted``); given that state as
``resume`` it continues exactly where it was taken.  Nothing here writes files.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
import time
import warnings
from typing import Callable

import torch
from tqdm.auto import tqdm

from sws.config import PretrainConfig, QuantizeConfig, RetrainConfig, lr_factor
from sws.errors import ConfigError, DataError, DivergenceError, TrainingInterrupted
from sws.method import distributed
from sws.method.adam import adam
from sws.method.augment import batch_generator
from sws.method.augment import parse as parse_augment
from sws.method.batches import (as_source, call_model, default_loss, distillation_loss, logits_of, scalar_loss,
                                 to_device)
from sws.method.evaluate import evaluate_splits
from sws.method.snap import Snap
from sws.method.state import Position, capture, environment, restore
from sws.prior import GaussianMixturePrior

__all__ = ["adam", "fit", "pretrain", "retrain", "retrain_optimizer", "MAX_LOG_PRECISION"]

MAX_LOG_PRECISION = math.log(1e12)  # a component narrower than sd 1e-6 has run away


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
    """Position, history and saved state of one ``fit``: start or resume, save, stop."""

    def __init__(self, stage, cfg, model, opt, prior, resume, on_state, extra):
        self.stage, self.cfg, self.model, self.opt, self.prior = stage, cfg, model, opt, prior
        self.on_state, self.saved, self.extra = on_state, None, extra
        self.base_lrs = [g["lr"] for g in opt.param_groups]  # from cfg: a resumed state holds decayed ones
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        if resume is None:
            self.pos = Position(1, 0, self.gen.get_state(), {})
            self.history = []
            self.save()
        else:
            self.pos, self.history = restore(*resume, stage, model, opt, prior, extra=extra)
            self.gen.set_state(self.pos.data_rng)
            self.saved = self._where()
            then, now = resume[1].get("environment"), environment()
            if then is not None and then != now:
                warnings.warn(f"{stage} resumes under {now}, the state was saved under {then}: "
                              "the result may differ in the last bits from an uninterrupted run",
                              RuntimeWarning, stacklevel=3)

    def save(self):
        if self.on_state is not None and distributed.is_main():
            self.on_state(*capture(self.stage, self.cfg, self.pos, self.history, self.model,
                                   self.opt, self.prior, extra=self.extra))
            self.saved = self._where()

    def _where(self):
        e, s = self.pos.epoch, self.pos.step
        if s:
            return f"epoch {e}, step {s}"
        return "before training" if e == 1 else f"after epoch {e - 1}"

    def stop_on_signal(self, signals: _Signals, step: int, sums: dict):
        """After a step: on a pending signal, save the state mid-epoch and stop."""
        if signals.signum is None:
            return
        self.pos = Position(self.pos.epoch, step, self.pos.data_rng, sums)
        self.save()
        name = signal.Signals(signals.signum).name
        raise TrainingInterrupted(f"{self.stage} stopped by {name} at epoch {self.pos.epoch}, "
                                  f"step {step}; its state is saved", signals.signum)

    def schedule_lr(self, done: int, total: int, schedule: str) -> float:
        """Set the optimiser's rates for this step per ``schedule``; the factor."""
        factor = lr_factor(schedule, done, total)
        for group, base in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return factor

    def end_epoch(self, rec: dict, signals: _Signals):
        self.history.append(rec)
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


def _check_prior(loop: _Loop, prior: GaussianMixturePrior, epoch: int, step: int, cfg):
    """End-of-epoch guard: non-finite mixture parameters or exploding precisions.

    Components that move onto each other are not stopped: merging them is what
    post-processing does (paper section 4)."""
    hint = (f"lower --lr-log-precisions (now {cfg.lr_log_precisions:g}) or --tau (now {cfg.tau:g})")
    with torch.no_grad():
        mu, gamma, log_pi = (t.detach().double() for t in prior.mixture())
        if not (torch.isfinite(mu).all() and torch.isfinite(gamma).all() and torch.isfinite(log_pi).all()):
            loop.diverged("the prior's parameters are not finite", epoch, step, hint)
        j = int(gamma.argmax())
        if gamma[j] > MAX_LOG_PRECISION:
            loop.diverged(f"component {j}'s precision exploded to {gamma[j].exp().item():.3g} "
                          f"(sd {(-0.5 * gamma[j]).exp().item():.2g})", epoch, step, hint)


def _bar(total, desc, quiet):
    return tqdm(total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty() or not distributed.is_main())


def fit(model: torch.nn.Module, train, cfg: PretrainConfig | RetrainConfig, optimizer: torch.optim.Optimizer, *,
        prior: GaussianMixturePrior | None = None, covered: list[torch.Tensor] | None = None,
        n_train: int | None = None, loss_fn: Callable | None = None, output: Callable | None = None,
        val=None, test=None, device=None, guard: bool = True, quiet: bool = False,
        on_epoch: Callable[[dict], object] | None = None, resume: tuple[dict, dict] | None = None,
        on_state: Callable[[dict, dict], None] | None = None, extra=None,
        teacher: torch.nn.Module | None = None) -> list[dict]:
    """Train ``model`` for ``cfg.epochs`` epochs; with ``prior``, retrain with the mixture prior.

    Args:
      train, val, test: Datasets (or DataLoaders) of (input, target) pairs; the loop draws
        the batch order from ``cfg.seed`` (and, under DDP, gives each process its shard).
      cfg: ``cfg.epochs``, ``batch_size``, ``seed``, ``lr_schedule``; with a prior also
        ``tau_at`` (the tau schedule) and the learning rates named in guard messages.
      optimizer: its ``lr`` per group are the base rates the schedule scales.
      prior, covered: the mixture prior and the tensors it covers (retraining).
      n_train: N in tau / N (default: the training set's size).
      loss_fn: ``loss_fn(scores, target)`` (default cross-entropy); ``output`` picks the
        scores from the model's output (default ``sws.method.batches.logits_of``).
      on_epoch: called with each epoch's record; a true return value stops training
        after that epoch (early stopping).
      resume, on_state: see the module docstring.  ``extra``: an object with
        ``state_dict()`` / ``load_state_dict()`` saved and restored with the loop.
      ``cfg.augment``: training batches shifted / mirrored (``sws.method.augment``), the
        same draws on a resume.
      teacher: with ``cfg.distill`` > 0, a frozen network (the pretrained one) whose scores
        on each batch are soft targets: the data term is ``(1 - distill) loss +
        distill distillation_loss`` (``sws.method.batches``).
      guard: stop with ``DivergenceError`` on a non-finite loss (before it reaches the
        weights on the CPU; at the end of the epoch on other devices, where checking every
        step would synchronise) and, with a prior, on exploding precisions.
    Returns:
      The history: every epoch's record, those before a resume included.
    """
    if prior is not None and covered is None:
        raise ConfigError("a prior needs the tensors it covers (covered=)")
    train = as_source(train)
    augment = parse_augment(getattr(cfg, "augment", ""))
    if augment is not None:
        augment.check(train.batch(torch.arange(1))[0])
    stage = "retrain" if prior is not None else "pretrain"
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loss_fn = loss_fn or default_loss
    output = output or logits_of
    n_train = n_train or len(train)
    rank, world = distributed.rank(), distributed.world_size()
    net = distributed.wrap(model)
    prior_params = list(prior.parameters()) if prior is not None else []
    loop = _Loop(stage, cfg, model, optimizer, prior, resume, on_state, extra)
    distill, temperature = getattr(cfg, "distill", 0.0), getattr(cfg, "distill_temperature", None)
    if distill and teacher is None:
        raise ConfigError("distill > 0 needs the teacher network (teacher=)")
    steps = train.steps(cfg.batch_size, world)
    if steps == 0:                       # drop_last with fewer items than a batch
        raise DataError(f"{len(train)} training items make no full batch of {cfg.batch_size} (the DataLoader's "
                        "drop_last=True): lower batch_size or keep the last batch")
    if not train.drop_last and -(-len(train) * train.passes // world) % cfg.batch_size == 1 and any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise DataError(f"{len(train)} training items in batches of {cfg.batch_size} leave a last batch of one item, "
                        "which batch-norm cannot train on: pass a DataLoader with drop_last=True, or another "
                        "batch_size")
    check_every_step = guard and device.type == "cpu"
    every = getattr(cfg, "watch_every", 0) if hasattr(extra, "midway") else 0   # watches within epochs
    stop = bool(loop.history) and bool(loop.history[-1].get("stopped_early"))
    # the snap phase (sws.method.snap): after the last epoch of retraining (or its early stop)
    snap_epochs = cfg.snap_epochs if prior is not None and getattr(cfg, "budget", False) else 0
    snapper = Snap(prior, covered, getattr(extra, "threshold", QuantizeConfig.merge_threshold)) if snap_epochs else None
    begun = next((r["epoch"] for r in loop.history if r.get("snap_begins")), None)
    last = cfg.epochs if begun is None else begun + snap_epochs
    epoch = loop.pos.epoch
    with _Signals() as signals:
        while epoch <= last and not stop:
            snapping = begun is not None and epoch > begun
            done0, total = ((epoch - 1 - begun) * steps, snap_epochs * steps) if snapping else \
                ((epoch - 1) * steps, cfg.epochs * steps)
            schedule = (getattr(cfg, "snap_lr_schedule", "") or cfg.lr_schedule) if snapping else cfg.lr_schedule
            net.train()
            skip, sums = loop.pos.step, dict(loop.pos.sums)
            loss_sum = torch.tensor(sums.get("loss", 0.0), dtype=torch.float64, device=device)
            cx_sum = torch.tensor(sums.get("complexity", 0.0), dtype=torch.float64, device=device)
            seen = sums.get("seen", 0)
            t0 = time.perf_counter() - sums.get("seconds", 0.0)
            tau = None
            tau_scale = float(getattr(extra, "tau_scale", 1.0))   # the budget's controller, if any
            with _bar(steps, f"{stage} {epoch}/{cfg.epochs}", quiet) as bar:
                bar.update(skip)
                for step, (x, y) in train.epoch(cfg.batch_size, loop.gen, skip, rank, world):
                    if augment is not None:
                        x = augment(x, batch_generator(cfg.seed, epoch, step, rank))
                    x, y = to_device(x, device), to_device(y, device)
                    with snapper.applied() if snapping else contextlib.nullcontext():
                        scores = output(call_model(net, x))
                        loss = scalar_loss(loss_fn(scores, y))
                        if distill:
                            with torch.no_grad():
                                soft = output(call_model(teacher, x))
                            loss = (1 - distill) * loss + distill * distillation_loss(scores, soft, temperature)
                        if check_every_step and not math.isfinite(loss.item()):
                            if epoch == 1 and step == 0:     # before any update: the data, not training
                                raise DataError(f"the loss of the first training batch is {loss.item()}, before "
                                                "any update: the inputs or targets hold non-finite values (or the "
                                                "network gives them on these inputs); check them with torch.isfinite")
                            loop.diverged(f"the loss is {loss.item()}", epoch, step + 1, _hint(cfg, prior))
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()              # under DDP: the data term's gradients are averaged
                    if prior is not None:
                        tau = cfg.tau_at(epoch - 1 + step / steps) * tau_scale
                        if cfg.zero_sharpen != 1:
                            with torch.no_grad():
                                prior.beta[0] = cfg.zero_beta_at(((epoch - 1) * steps + step) / (cfg.epochs * steps))
                        # adds (tau / N) dC/dp to every gradient: the loss data + tau/N C
                        # (and C * len(y) to the running sum: no tensor operations for it)
                        complexity = prior.backward_complexity(covered, tau / n_train, acc=cx_sum,
                                                               factor=len(y))
                        distributed.average_gradients(prior_params)
                        if check_every_step and not math.isfinite(float(complexity)):
                            loop.diverged(f"the prior's complexity term is {float(complexity)}", epoch,
                                          step + 1, _hint(cfg, prior))
                    loop.schedule_lr(done0 + step, total, schedule)
                    optimizer.step()
                    loss_sum += loss.detach().double() * len(y)
                    seen += len(y)
                    bar.update()
                    if every and (step + 1) % every == 0 and step + 1 < steps and extra.midway(
                            epoch, step + 1, steps, snapper.applied if snapping else None):
                        break                        # the watch within the epoch stops retraining
                    loop.stop_on_signal(signals, step + 1, {
                        "loss": loss_sum.item(), "complexity": cx_sum.item(), "seen": seen,
                        "seconds": time.perf_counter() - t0} if signals.signum is not None else {})
            seconds = time.perf_counter() - t0
            loss_total, cx_total, seen_total = distributed.all_reduce_sum(
                [loss_sum.item(), cx_sum.item(), seen], device)
            if guard and not math.isfinite(loss_total + cx_total):
                loop.diverged("the loss is not finite", epoch, steps, _hint(cfg, prior))
            rec = {"stage": stage, "epoch": epoch, "seconds": seconds,
                   "lr_scale": lr_factor(schedule, done0 + steps - 1, total),
                   "train_loss": loss_total / max(seen_total, 1)}
            if prior is not None:
                if guard:
                    _check_prior(loop, prior, epoch, steps, cfg)
                rec.update(tau=cfg.tau_at(epoch - 1 + (steps - 1) / steps) * tau_scale,
                           complexity=cx_total / max(seen_total, 1),
                           share_within_2sd_of_zero=_near_zero(prior, covered), prior=prior.summary())
            if snapping:
                rec["snap"] = True                   # trained, and scored below, through the snap
            with snapper.applied() if snapping else contextlib.nullcontext():
                rec.update(evaluate_splits(model, {"val": val, "test": test}, loss_fn=loss_fn, output=output,
                                           device=device))
            stop = bool(on_epoch is not None and on_epoch(rec))
            if snap_epochs and begun is None and (stop or epoch == cfg.epochs):
                # retraining is over: train its kept state (the budget's) through the snap
                rec["snap_begins"], stop, begun, last = True, False, epoch, epoch + snap_epochs
                if hasattr(extra, "begin_snap"):
                    extra.begin_snap()
                optimizer.state.clear()              # the moments belong to the weights left behind
            if stop:
                rec["stopped_early"] = True
            loop.end_epoch(rec, signals)
            epoch += 1
    if signals.signum is not None:   # it came after the last check: the state is saved, stop as asked
        raise TrainingInterrupted(f"{stage} stopped by {signal.Signals(signals.signum).name} as it ended; "
                                  "its state is saved", signals.signum)
    return loop.history


def _near_zero(prior, covered) -> float:
    with torch.no_grad():
        sd0 = torch.exp(-0.5 * prior.log_precisions[0].detach())
        n = sum(w.numel() for w in covered)
        inside = sum((w.detach().abs() < 2.0 * sd0).sum() for w in covered)
        return float(inside) / max(n, 1)


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _hint(cfg, prior) -> str:
    if prior is None:
        return f"lower the learning rate (now {cfg.lr:g})"
    return (f"lower --lr-weights (now {cfg.lr_weights:g}), --lr-log-precisions "
            f"(now {cfg.lr_log_precisions:g}) or --tau (now {cfg.tau:g})")


def pretrain(model: torch.nn.Module, train, cfg: PretrainConfig, val=None, test=None, quiet: bool = False,
             on_epoch: Callable[[dict], object] | None = None, **kw) -> list[dict]:
    """Train with Adam (``cfg.lr``) and the data term only; keywords as ``fit``'s."""
    return fit(model, train, cfg, adam(model.parameters(), cfg.lr), val=val, test=test,
               quiet=quiet, on_epoch=on_epoch, **kw)


def retrain_optimizer(model, prior: GaussianMixturePrior, cfg: RetrainConfig) -> torch.optim.Adam:
    """Adam with the four learning rates of the tutorial: weights, means, log-precisions, logits
    (SPEC section 3)."""
    mixing = [prior.mixing_logits]
    if isinstance(prior.pi0_logit, torch.nn.Parameter):  # learned pi0 (Beta prior)
        mixing.append(prior.pi0_logit)
    return adam([
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr_weights},
        {"params": [prior.means], "lr": cfg.lr_means},
        {"params": [prior.log_precisions], "lr": cfg.lr_log_precisions},
        {"params": mixing, "lr": cfg.lr_mixing},
    ], cfg.lr_weights)


def retrain(model: torch.nn.Module, prior: GaussianMixturePrior, train, cfg: RetrainConfig, val=None,
            test=None, quiet: bool = False, on_epoch: Callable[[dict], object] | None = None, *,
            covered: list[torch.Tensor] | None = None, watch=None, **kw) -> list[dict]:
    """Retrain with loss + (tau / N) C; ``covered`` defaults to every trainable parameter
    (``cfg.prior.cover`` = "weights": biases left out).

    ``watch``: a ``sws.method.watch.Budget`` (or any callable on the epoch's record with
    ``state_dict``/``load_state_dict``): it sees each record first (and adds to it), may stop
    training, and travels with the saved state.  Other keywords as ``fit``'s."""
    if covered is None:
        covered = [p for n, p in model.named_parameters()
                   if p.requires_grad and (cfg.prior.cover == "all" or not n.endswith("bias"))]
    if cfg.distill and kw.get("teacher") is None:   # the network as handed in: the pretrained one
        kw["teacher"] = _frozen_copy(model)
    hook = on_epoch
    if watch is not None:
        def hook(rec):
            stop = watch(rec)
            return bool(on_epoch(rec) if on_epoch is not None else False) or stop
    return fit(model, train, cfg, retrain_optimizer(model, prior, cfg), prior=prior, covered=covered,
               val=val, test=test, quiet=quiet, on_epoch=hook, extra=watch, **kw)

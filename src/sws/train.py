"""Training loops: plain pretraining and retraining with the mixture prior (SPEC sections 1, 3).

Each loop returns its history, a list of per-epoch records (plain dicts).
Progress display and callbacks are passed in; nothing here writes files.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sws.config import PretrainConfig, RetrainConfig
from sws.data import Dataset, batches
from sws.models import covered_parameters
from sws.prior import GaussianMixturePrior

__all__ = ["evaluate", "pretrain", "retrain", "retrain_optimizer"]


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


def pretrain(model: torch.nn.Module, train: Dataset, cfg: PretrainConfig,
             val: Dataset | None = None, test: Dataset | None = None, quiet: bool = False,
             on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train with Adam and cross-entropy only."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history = []
    steps = -(-len(train) // cfg.batch_size)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0, total, seen = time.perf_counter(), 0.0, 0
        with _bar(steps, f"pretrain {epoch}/{cfg.epochs}", quiet) as bar:
            for x, y in batches(train, cfg.batch_size, gen):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(y)
                seen += len(y)
                bar.update()
        rec = {"stage": "pretrain", "epoch": epoch, "seconds": time.perf_counter() - t0,
               "train_cross_entropy": total / seen, **_eval_sets(model, val, test)}
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
    return history


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


def retrain(model: torch.nn.Module, prior: GaussianMixturePrior, train: Dataset,
            cfg: RetrainConfig, val: Dataset | None = None, test: Dataset | None = None,
            quiet: bool = False, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Retrain with loss = CE + (tau / N) * C(weights), C the prior's complexity term.

    tau follows ``cfg.tau_schedule`` step by step; each epoch's record holds
    the value at its last step.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    covered = list(covered_parameters(model, cfg.prior.cover).values())
    opt = retrain_optimizer(model, prior, cfg)
    history = []
    steps = -(-len(train) // cfg.batch_size)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0, ce_sum, cx_sum, seen = time.perf_counter(), 0.0, 0.0, 0
        with _bar(steps, f"retrain {epoch}/{cfg.epochs}", quiet) as bar:
            for step, (x, y) in enumerate(batches(train, cfg.batch_size, gen)):
                tau = cfg.tau_at(epoch - 1 + step / steps)
                scale = tau / len(train)
                ce = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                ce.backward()
                # adds (tau / N) dC/dp to every gradient: the loss CE + tau/N C
                complexity = prior.backward_complexity(covered, scale)
                opt.step()
                ce_value = ce.item()
                ce_sum += ce_value * len(y)
                cx_sum += complexity * len(y)
                seen += len(y)
                bar.update()
                if not bar.disable:
                    bar.set_postfix(ce=f"{ce_value:.3f}", complexity=f"{complexity:.3g}",
                                    refresh=False)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            flat = torch.cat([w.detach().reshape(-1) for w in covered])
            mu, gamma, _ = prior.mixture()
            near_zero = (flat.abs() < 2.0 * torch.exp(-0.5 * gamma[0])).float().mean().item()
        rec = {"stage": "retrain", "epoch": epoch, "seconds": seconds, "tau": tau,
               "train_cross_entropy": ce_sum / seen, "complexity": cx_sum / seen,
               "share_within_2sd_of_zero": near_zero, "prior": prior.summary(),
               **_eval_sets(model, val, test)}
        history.append(rec)
        if on_epoch:
            on_epoch(rec)
    return history

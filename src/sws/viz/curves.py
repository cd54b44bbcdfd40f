"""Curves over retraining epochs: losses, the complexity term, accuracy, the post-processed
network's accuracy and CR with the budget, and the mixture's components."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["draw_training_curves", "draw_mixture_evolution"]

ZERO_COLOR = "#d62728"   # the zero component
COMP_COLOR = "#1f77b4"   # every other component


def _loss(rec: dict, split: str):
    """A record's data loss (``SPLIT_loss``; histories written before it: ``SPLIT_cross_entropy``)."""
    return rec.get(f"{split}_loss", rec.get(f"{split}_cross_entropy"))


def draw_training_curves(history: list[dict], path, pretrained_accuracy: float | None = None,
                         dpi: int = 100, budget: dict | None = None) -> Path:
    """Retraining's data loss, complexity term, accuracy, and the post-processed network's
    validation accuracy and CR over epochs (with the accuracy budget and the kept epoch)."""
    recs = [r for r in history if r.get("stage") == "retrain"]
    ep = [r["epoch"] for r in recs]
    watched = bool(recs) and "pp_val_error" in recs[-1]
    fig = Figure(figsize=(16 if watched else 12, 3.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 4 if watched else 3)
    ax_ce, ax_cx, ax_acc = axes[:3]
    ax_ce.plot(ep, [_loss(r, "train") for r in recs], "o-", label="train")
    for split in ("val", "test"):
        if recs and _loss(recs[0], split) is not None:
            ax_ce.plot(ep, [_loss(r, split) for r in recs], "o-", label=split)
    ax_ce.set_title("data loss")
    ax_cx.plot(ep, [r.get("complexity", np.nan) for r in recs], "o-", color="#9467bd")
    ax_cx.set_title("complexity term C (per batch)")
    for split in ("val", "test"):
        if recs and f"{split}_accuracy" in recs[0]:
            ax_acc.plot(ep, [100 * r[f"{split}_accuracy"] for r in recs], "o-", label=split)
    if watched:
        pp = [w for r in recs for w in [*r.get("watches", ()), r] if "pp_val_error" in w]
        ax_acc.plot([r["epoch"] for r in pp], [100 * (1 - r["pp_val_error"]) for r in pp], "s-",
                    color="#d62728", label="val, post-processed")
        ax_cr = axes[3]
        ax_cr.plot([r["epoch"] for r in pp], [r["pp_cr"] for r in pp], "s-", color="#d62728")
        ax_cr.set_title("post-processed CR (file bytes)")
        ax_cr.set_yscale("log")
        limit = (budget or {}).get("limit_val_error")
        if limit is not None:
            ax_acc.axhline(100 * (1 - limit), ls=":", color="#d62728", label="budget")
        kept = (budget or {}).get("epoch")
        if kept is not None:
            for ax in (ax_acc, ax_cr):
                ax.axvline(kept, ls="--", color="#2ca02c", lw=1, label="kept" if ax is ax_acc else None)
    if pretrained_accuracy is not None:
        ax_acc.axhline(100 * pretrained_accuracy, ls="--", color="#7f7f7f", label="pretrained")
    ax_acc.set_title("accuracy (%)")
    for ax in axes:
        ax.set_xlabel("retraining epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in (ax_ce, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=dpi)
    return Path(path)


def draw_mixture_evolution(epochs: list[int], mixtures: list[dict], path, dpi: int = 100) -> Path:
    """Each component's mean, standard deviation and mixing proportion over epochs."""
    fig = Figure(figsize=(12, 3.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, key, title in zip(axes, ("means", "stds", "pis"),
                              ("means", "standard deviations", "mixing proportions")):
        values = np.array([m[key] for m in mixtures])
        for j in range(values.shape[1]):
            ax.plot(epochs, values[:, j], lw=1.6 if j == 0 else 1, marker="." if len(epochs) < 40 else None,
                    color=ZERO_COLOR if j == 0 else COMP_COLOR, alpha=1 if j == 0 else 0.6,
                    zorder=3 if j == 0 else 2)
        if key != "means":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("retraining epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=dpi)
    return Path(path)

"""The search's report: the Pareto front of validation error against CR, as text and a plot."""

from __future__ import annotations

import math
from pathlib import Path

from sws.study.searchspace import Param

__all__ = ["pareto_front", "format_report", "plot_pareto"]


def _inside(p: Param, v) -> bool:
    return v in p.choices if p.choices else p.low <= v <= p.high


def pareto_front(study) -> list:
    """The complete trials no other complete trial beats in both objectives, by CR."""
    return sorted(study.best_trials, key=lambda t: t.values[1])


def format_report(study, out: Path) -> str:
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    lines = [f"study {study.study_name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)]
    if not complete:
        return "\n".join(lines + ["no complete trials yet"])
    front = pareto_front(study)
    base = next((t for t in complete if t.user_attrs.get("baseline")), None)
    held = any("holdout_error" in t.user_attrs for t in complete)   # --holdout-size
    head = (f"{'trial':>6}{'val err %':>10}{'CR':>9}" + (f"{'holdout %':>10}" if held else "")
            + f"{'test err %':>11}{'non-zero %':>11}{'bytes':>9}  file")
    lines += [f"Pareto front ({len(front)} of {len(complete)} complete trials; validation error "
              "is the objective, " + ("holdout and " if held else "") + "test error shown only):", head]

    def row(t, mark=""):
        a = t.user_attrs
        return (f"{mark + str(t.number):>6}{100 * t.values[0]:>10.2f}{t.values[1]:>9.1f}"
                + (f"{100 * a.get('holdout_error', math.nan):>10.2f}" if held else "")
                + f"{100 * a.get('test_error', math.nan):>11.2f}{100 * a.get('nonzero_share', math.nan):>11.2f}"
                f"{a.get('file_bytes', 0):>9}  {out / a.get('sws', '?')}")
    lines += [row(t, "*" if t is base else "") for t in front]
    if base is not None and base not in front:
        lines += ["tutorial baseline (not on the front):", row(base, "*")]
    lines.append("parameters:")
    for t in front + ([base] if base is not None and base not in front else []):
        lines.append(f"  {t.number}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()))
    if base is not None:
        better = [t for t in front if t.values[0] <= base.values[0] and t.values[1] > base.values[1]]
        if better:
            b = max(better, key=lambda t: t.values[1])
            lines.append(f"beats the tutorial settings at equal or lower validation error: trial "
                         f"{b.number}, CR {b.values[1]:.1f} vs {base.values[1]:.1f} "
                         f"({100 * b.values[0]:.2f}% vs {100 * base.values[0]:.2f}%)")
        else:
            lines.append("no trial beats the tutorial settings at equal or lower validation error")
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def plot_pareto(study, path: Path) -> Path:
    """Validation error against CR (log scale) for every complete trial, the front highlighted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    front = pareto_front(study)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    ax.scatter([t.values[1] for t in complete], [100 * t.values[0] for t in complete], s=14,
               color="0.65", label="trials")
    ax.step([t.values[1] for t in front], [100 * t.values[0] for t in front], where="pre",
            color="tab:red", marker="o", ms=4, label="Pareto front")
    for t in complete:
        if t.user_attrs.get("baseline"):
            ax.scatter([t.values[1]], [100 * t.values[0]], marker="*", s=140, color="tab:blue",
                       zorder=3, label="tutorial settings")
    ax.set_xscale("log")
    ax.set_xlabel("compression rate (from the .sws file's bytes)")
    ax.set_ylabel("validation error (%)")
    ax.set_title(f"{study.study_name}: {len(complete)} trials")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

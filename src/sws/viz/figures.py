"""Figures of a run: the per-epoch joint plot, its animation, and the final figures.

Everything is drawn from the run folder's files (``history.json``,
``metrics.json``, the checkpoints and ``snapshots/epoch_NNN``), never inside
the training loop.  Matplotlib is used through ``matplotlib.figure.Figure``
and its Agg canvas only (no pyplot, no global backend switch), so drawing needs
no display and leaves an interactive session's backend alone.

The joint plot is the tutorial's visualisation (PART 2): pretrained weight (x)
against current weight (y), marginal histograms (current weights on a log count
axis, since the zero spike dwarfs the rest), and a line at each mixture mean
with a band at mean +- 2 standard deviations.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from sws.runs.checkpoint import load_checkpoint
from sws.runs.rundir import RunDir
from sws.viz.curves import COMP_COLOR, ZERO_COLOR, draw_mixture_evolution, draw_training_curves

__all__ = ["MAX_POINTS", "mixture_from_state", "subsample", "draw_frame", "draw_frames",
           "snapshot_paths", "snapshots_are_current",
           "make_animation", "stage_weights", "draw_histograms", "draw_layer_sparsity",
           "draw_training_curves", "draw_mixture_evolution", "draw_run_figures"]

MAX_POINTS = 20_000      # scatter points per frame; the histograms always use every weight
BINS = 120               # histogram bins (shared by every frame of a run, so frames compare)
POINT_COLOR = "#333333"
PRIOR_PREFIX = "prior."
STAGE_LABELS = {"pretrained": "before retraining", "retrained": "after retraining",
                "quantized": "after post-processing"}


def mixture_from_state(tensors: dict) -> dict:
    """Means, standard deviations and mixing proportions from a prior's saved tensors.

    mu = [0, means], sigma = exp(-gamma / 2), pi = [pi0, (1 - pi0) softmax(rho)]
    (``sws.prior``); component 0 is the zero component.
    """
    t = {k[len(PRIOR_PREFIX):] if k.startswith(PRIOR_PREFIX) else k: np.asarray(v, dtype=np.float64)
         for k, v in tensors.items()}
    rho = t["mixing_logits"] - t["mixing_logits"].max()
    soft = np.exp(rho) / np.exp(rho).sum()
    pi0 = float(t["pi0"]) if "pi0" in t else float(1.0 / (1.0 + np.exp(-t["pi0_logit"])))
    return {"means": np.concatenate([[0.0], t["means"]]),
            "stds": np.exp(-0.5 * t["log_precisions"]),
            "pis": np.concatenate([[pi0], (1.0 - pi0) * soft])}


def subsample(n: int, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` weights, the same for every frame."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def _limits(*arrays, pad=0.05):
    lo = min(float(a.min()) for a in arrays if a.size)
    hi = max(float(a.max()) for a in arrays if a.size)
    span = (hi - lo) or 1.0
    return lo - pad * span, hi + pad * span


def _mixture_marks(ax, mixture, horizontal=True):
    """A line at each mean and a band at mean +- 2 sd; the zero component in its own colour."""
    span, line = (ax.axhspan, ax.axhline) if horizontal else (ax.axvspan, ax.axvline)
    means, stds = np.asarray(mixture["means"]), np.asarray(mixture["stds"])
    # bands that overlap (wide early in retraining) share the opacity, so they do not saturate
    overlap = (np.abs(means[:, None] - means[None, :]) < 2 * stds[None, :]).sum(1)
    for j, (mu, sd) in enumerate(zip(means, stds)):
        color = ZERO_COLOR if j == 0 else COMP_COLOR
        alpha = min(0.15 if j == 0 else 0.1, 0.4 / max(overlap[j], 1))
        span(mu - 2 * sd, mu + 2 * sd, color=color, alpha=alpha, lw=0, zorder=0)
        line(mu, color=color, lw=0.8 if j else 1.2, alpha=0.8, zorder=1)


def draw_frame(pretrained: np.ndarray, current: np.ndarray, mixture: dict, path, *,
               title: str = "", limits=None, sample: np.ndarray | None = None,
               dpi: int = 100) -> Path:
    """The tutorial's joint plot of one epoch, saved as a PNG.

    Args:
      pretrained, current: flat arrays of the covered weights, in the same order.
      mixture: {"means", "stds", "pis"}, component 0 the zero component.
      limits: ((xlo, xhi), (ylo, yhi)); fixed across the frames of an animation.
      sample: indices of the weights shown in the scatter (``subsample``); the
        histograms always count every weight.
    """
    pretrained, current = np.asarray(pretrained).ravel(), np.asarray(current).ravel()
    (xlo, xhi), (ylo, yhi) = limits or (_limits(pretrained), _limits(current))
    idx = subsample(pretrained.size) if sample is None else sample
    fig = Figure(figsize=(7, 7), dpi=dpi)
    grid = fig.add_gridspec(2, 2, width_ratios=(4, 1.3), height_ratios=(1.3, 4), left=0.11,
                            right=0.97, bottom=0.09, top=0.9, wspace=0.04, hspace=0.04)
    ax = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    side = fig.add_subplot(grid[1, 1], sharey=ax)
    _mixture_marks(ax, mixture)
    ax.plot(pretrained[idx], current[idx], ls="none", marker=".", ms=2, mew=0, alpha=0.35,
            color=POINT_COLOR, rasterized=True, zorder=2)
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("pretrained weight")
    ax.set_ylabel("current weight")
    counts, edges = np.histogram(pretrained, BINS, (xlo, xhi))
    top.stairs(counts, edges, fill=True, color="#7f7f7f")
    top.set_ylabel("count")
    counts, edges = np.histogram(current, BINS, (ylo, yhi))
    _mixture_marks(side, mixture)
    side.stairs(np.maximum(counts, 0.5), edges, orientation="horizontal", fill=True,
                baseline=0.5, color="#7f7f7f", zorder=2)
    side.set_xscale("log")
    side.set_xlim(0.5, max(counts.max(), 1) * 2)
    side.set_xlabel("count (log)")
    top.tick_params(labelbottom=False)
    side.tick_params(labelleft=False)
    fig.suptitle(title, fontsize=12)
    fig.text(0.97, 0.935, f"{pretrained.size:,} weights ({idx.size:,} shown)", ha="right",
             fontsize=8, color="#555555")
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def _epoch_accuracy(run: RunDir) -> dict[int, float]:
    acc = {}
    for rec in run.read_json("history.json", []):
        if rec.get("stage") == "retrain" and "test_accuracy" in rec:
            acc[rec["epoch"]] = rec["test_accuracy"]
    pre = run.read_json("metrics.json", {}).get("pretrained", {})
    if "test_accuracy" in pre:
        acc[0] = pre["test_accuracy"]
    return acc


def snapshot_paths(run_dir) -> list[Path]:
    """``RUN/snapshots/epoch_NNN`` (without suffix), in epoch order."""
    folder = Path(run_dir) / "snapshots"
    return sorted(p.with_suffix("") for p in folder.glob("epoch_*.safetensors"))


def snapshots_are_current(run_dir) -> bool:
    """Whether the last snapshot holds the retrained checkpoint's weights (True if either is missing).

    False means the snapshots come from an earlier retraining of the run folder.
    """
    run = RunDir.open(run_dir)
    paths = snapshot_paths(run.path)
    if not paths or not run.has("retrained"):
        return True
    last, _ = load_checkpoint(paths[-1])
    retrained, _ = run.load("retrained")
    return all(k in retrained and retrained[k].shape == v.shape and bool((retrained[k] == v).all())
               for k, v in last.items())


def draw_frames(run_dir, out_dir=None, max_points: int = MAX_POINTS) -> list[Path]:
    """One joint-plot PNG per snapshot (epoch 0 = before retraining), ``RUN/figures/frames/``.

    Axis limits and histogram bins are shared by all frames, so they animate.
    """
    run = RunDir.open(run_dir)
    paths = snapshot_paths(run.path)
    if not paths:
        return []
    out = Path(out_dir) if out_dir else run.path / "figures" / "frames"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("epoch_*.png"):   # frames of an earlier, longer retraining
        old.unlink()
    snaps = []
    for p in paths:
        tensors, meta = load_checkpoint(p)
        names = sorted(k for k in tensors if not k.startswith(PRIOR_PREFIX))
        flat = np.concatenate([tensors[k].numpy().ravel() for k in names])
        prior = {k: v.numpy() for k, v in tensors.items() if k.startswith(PRIOR_PREFIX)}
        snaps.append((int(meta.get("epoch", len(snaps))), flat, mixture_from_state(prior)))
    pretrained = snaps[0][1]
    limits = (_limits(pretrained), _limits(*(s[1] for s in snaps)))
    idx = subsample(pretrained.size, max_points)
    acc = _epoch_accuracy(run)
    written = []
    for epoch, flat, mixture in snaps:
        title = f"epoch {epoch}" + (" (before retraining)" if epoch == 0 else "")
        if epoch in acc:
            title += f", test accuracy {100 * acc[epoch]:.2f}%"
        written.append(draw_frame(pretrained, flat, mixture, out / f"epoch_{epoch:03d}.png",
                                  title=title, limits=limits, sample=idx))
    return written


def make_animation(frames: list[Path], gif_path, mp4_path=None, fps: float = 2.0) -> list[Path]:
    """Assemble PNG frames into a looping GIF (Pillow) and, where ffmpeg is on PATH, an MP4.

    Returns the files written.  The last frame is held three times as long.
    """
    from PIL import Image
    if not frames:
        return []
    images = [Image.open(f).convert("RGB") for f in frames]
    # one shared palette keeps the colours steady from frame to frame
    palette = images[-1].quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    pal = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    ms = int(1000 / fps)
    gif_path = Path(gif_path)
    pal[0].save(gif_path, save_all=True, append_images=pal[1:], loop=0, optimize=False,
                duration=[ms] * (len(pal) - 1) + [3 * ms], disposal=1)
    written = [gif_path]
    ffmpeg = shutil.which("ffmpeg")
    if mp4_path and ffmpeg:
        cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "image2pipe", "-framerate", str(fps),
               "-i", "-", "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-pix_fmt", "yuv420p",
               "-c:v", "libx264", str(mp4_path)]
        pngs = b"".join(Path(f).read_bytes() for f in frames)
        if subprocess.run(cmd, input=pngs, capture_output=True).returncode == 0:
            written.append(Path(mp4_path))
    return written


def stage_weights(run_dir) -> dict[str, dict[str, np.ndarray]]:
    """The covered weights of each stage that exists, {stage: {name: flat array}}.

    The cover ("all" or "weights") is the one the run was retrained with.
    """
    from sws.runs.stages import covered_of, model_from_checkpoint
    run = RunDir.open(run_dir)
    cover = "all"
    if run.has("retrained"):
        cover = run.load("retrained")[1].get("retrain", {}).get("prior", {}).get("cover", "all")
    out = {}
    for stage in ("pretrained", "retrained", "quantized"):
        if run.has(stage):
            tensors, meta = run.load(stage)
            model = model_from_checkpoint(tensors, meta, str(run.path / stage))
            out[stage] = {k: p.detach().numpy().ravel().copy()
                          for k, p in covered_of(model, {"cover": cover}).items()}
    return out


def draw_histograms(stages: dict[str, np.ndarray], path, dpi: int = 100) -> Path:
    """Weight histograms per stage (columns), linear counts (top) and log counts (bottom)."""
    stages = {k: np.asarray(v).ravel() for k, v in stages.items()}
    lo, hi = _limits(*stages.values(), pad=0.02)
    fig = Figure(figsize=(4 * len(stages), 6), dpi=dpi, layout="constrained")
    axes = fig.subplots(2, len(stages), squeeze=False, sharex=True)
    for col, (stage, w) in enumerate(stages.items()):
        counts, edges = np.histogram(w, 2 * BINS, (lo, hi))
        for row, log in enumerate((False, True)):
            ax = axes[row, col]
            ax.stairs(np.maximum(counts, 0.5) if log else counts, edges, fill=True,
                      baseline=0.5 if log else 0, color=ZERO_COLOR if stage == "quantized" else COMP_COLOR)
            if log:
                ax.set_yscale("log")
                ax.set_xlabel("weight")
            ax.set_ylabel("count (log)" if log else "count")
        nz = np.count_nonzero(w) / max(w.size, 1)
        axes[0, col].set_title(f"{STAGE_LABELS.get(stage, stage)}\nnon-zero {100 * nz:.2f}%",
                               fontsize=10)
    fig.savefig(path, dpi=dpi)
    return Path(path)


def draw_layer_sparsity(layers: dict[str, dict[str, np.ndarray]], path, dpi: int = 100) -> Path:
    """Bar chart of each layer's non-zero share, one bar per stage given ({stage: {layer: w}})."""
    names = list(next(iter(layers.values())))
    fig = Figure(figsize=(max(6, 0.9 * len(names) + 3), 4), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(layers)
    x = np.arange(len(names))
    for i, (stage, by_name) in enumerate(layers.items()):
        share = [100 * np.count_nonzero(by_name[n]) / max(by_name[n].size, 1) for n in names]
        bars = ax.bar(x + (i - (len(layers) - 1) / 2) * width, share, width,
                      label=STAGE_LABELS.get(stage, stage),
                      color=ZERO_COLOR if stage == "quantized" else "#9e9e9e")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("non-zero weights (%)")
    ax.set_ylim(0, 125)
    ax.legend(fontsize=8, loc="upper center", ncol=len(layers))
    ax.set_title("non-zero share per layer")
    fig.savefig(path, dpi=dpi)
    return Path(path)


def _mixture_series(run: RunDir):
    epochs, mixtures = [], []
    snaps = snapshot_paths(run.path)
    if snaps and snaps[0].name == "epoch_000":
        tensors, _ = load_checkpoint(snaps[0])
        epochs.append(0)
        mixtures.append(mixture_from_state({k: v.numpy() for k, v in tensors.items()
                                            if k.startswith(PRIOR_PREFIX)}))
    for rec in run.read_json("history.json", []):
        if rec.get("stage") == "retrain" and "prior" in rec:
            epochs.append(rec["epoch"])
            mixtures.append({k: np.asarray(v) for k, v in rec["prior"].items()})
    return epochs, mixtures


def draw_run_figures(run_dir, out_dir=None, frames: bool = True) -> dict[str, Path]:
    """Every figure a run's files allow, into ``RUN/figures/``; returns {name: path}.

    frames: the per-epoch joint plots (from ``snapshots/``) and their animation;
    then the final figures: histograms per stage, non-zero share per layer,
    training curves and the mixture's evolution.
    """
    run = RunDir.open(run_dir)
    out = Path(out_dir) if out_dir else run.path / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if frames and not snapshots_are_current(run.path):
        warnings.warn(f"{run.path / 'snapshots'}: snapshots are from an earlier retraining; "
                      "no per-epoch frames drawn (retrain with --figures to redraw them)")
    elif frames:
        pngs = draw_frames(run.path, out / "frames")
        if pngs:
            written["final_frame"] = pngs[-1]
            for p in make_animation(pngs, out / "animation.gif", out / "animation.mp4"):
                written[p.name.replace(".", "_")] = p
    weights = stage_weights(run.path)
    if weights:
        written["histograms"] = draw_histograms(
            {s: np.concatenate(list(w.values())) for s, w in weights.items()}, out / "histograms.png")
        bars = {s: weights[s] for s in ("pretrained", "quantized") if s in weights}
        written["layer_sparsity"] = draw_layer_sparsity(bars, out / "layer_sparsity.png")
    history = run.read_json("history.json", [])
    if any(r.get("stage") == "retrain" for r in history):
        metrics = run.read_json("metrics.json", {})
        pre = metrics.get("pretrained", {})
        pre = pre.get("val_accuracy", pre.get("test_accuracy"))
        written["training_curves"] = draw_training_curves(history, out / "training_curves.png", pre,
                                                          budget=metrics.get("retrained", {}).get("budget"))
        epochs, mixtures = _mixture_series(run)
        written["mixture"] = draw_mixture_evolution(epochs, mixtures, out / "mixture.png")
    return written

"""Time one per-epoch joint-plot frame for a LeNet-5-Caffe-sized model (issue 5).

Synthetic weights of LeNet-5-Caffe's shapes (431,080 covered parameters): the
"pretrained" weights are Gaussian, the "current" ones have been pulled towards a
17-component mixture (most of them into the zero spike), as after retraining.
Drawing uses the same code as ``sws retrain --figures``: every weight goes into
the histograms, a fixed subsample of ``MAX_POINTS`` into the scatter.

    python benchmarks/figures_bench.py [--repeat 5] [--max-points 20000] [--out DIR]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from sws.viz.figures import MAX_POINTS, draw_frame, make_animation, subsample

LENET5_CAFFE = [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)]


def synthetic(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = sum(int(np.prod(s)) for s in LENET5_CAFFE)
    pre = rng.normal(0, 0.05, n).astype(np.float32)
    means = np.concatenate([[0.0], np.linspace(-0.25, 0.25, 16)])
    stds = np.concatenate([[0.004], np.full(16, 0.01)])
    pis = np.concatenate([[0.95], np.full(16, 0.05 / 16)])
    nearest = np.abs(pre[:, None] - means[None, 1:]).argmin(1) + 1
    comp = np.where(np.abs(pre) < 0.06, 0, nearest)
    cur = (means[comp] + rng.normal(0, 1, n) * stds[comp] * 0.5).astype(np.float32)
    return pre, cur, {"means": means, "stds": stds, "pis": pis}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="keep the frames here")
    ap.add_argument("--max-points", type=int, default=MAX_POINTS,
                    help="scatter points (the histograms always count every weight)")
    args = ap.parse_args()
    pre, cur, mixture = synthetic()
    out = args.out or Path(tempfile.mkdtemp(prefix="sws-figures-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    idx = subsample(pre.size, args.max_points)
    draw_frame(pre, cur, mixture, out / "warmup.png", sample=idx)  # font cache, imports
    times, frames = [], []
    for i in range(args.repeat):
        t = pre + (cur - pre) * (i + 1) / args.repeat  # weights moving towards the clusters
        t0 = time.perf_counter()
        frames.append(draw_frame(pre, t, mixture, out / f"epoch_{i:03d}.png", sample=idx,
                                 title=f"epoch {i} (synthetic)"))
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    make_animation(frames, out / "animation.gif")
    gif = time.perf_counter() - t0
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"weights: {pre.size:,} (scatter: {idx.size:,} points)")
    print(f"frame: median {statistics.median(times):.3f} s, max {max(times):.3f} s "
          f"over {args.repeat} frames")
    print(f"GIF of {len(frames)} frames: {gif:.3f} s")
    print(f"files in {out}")


if __name__ == "__main__":
    main()

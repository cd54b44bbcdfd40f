"""``sws report RUN_DIR``: one self-contained HTML page about a run.

The page holds the figures (embedded as ``data:`` URIs), the metrics table,
the per-layer table and the exact command and settings of every stage.  It
references no other file: a Content-Security-Policy forbids every load except
inline styles and ``data:`` images, so a browser shows it the same anywhere.
Like the figures, it is built from the run folder's files alone.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path

import numpy as np

from sws.format.container import FormatError
from sws.format.stats import file_stats
from sws.viz.figures import draw_run_figures, stage_weights
from sws.runs.rundir import RunDir
from sws.storage import atomic_write

__all__ = ["write_report"]

SWS_FILE = "model.sws"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:.25em .8em;border-bottom:1px solid #e4e4e4;
text-align:right}th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #999}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
.muted{color:#777}.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.row figure{flex:1 1 400px;max-width:570px}
"""


def _pct(x):
    return "&ndash;" if x is None else f"{100 * x:.2f}%"


def _img(path: Path, alt: str, caption: str) -> str:
    mime = {".png": "image/png", ".gif": "image/gif"}[path.suffix]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_section(run: RunDir, weights: dict) -> str:
    metrics = run.read_json("metrics.json", {})
    acc = {"pretrained": metrics.get("pretrained", {}).get("test_accuracy"),
           "retrained": metrics.get("retrained", {}).get("test_accuracy"),
           "quantized": metrics.get("quantized", {}).get("test_accuracy")}
    q = metrics.get("quantized", {})
    acc["pretrained"] = acc["pretrained"] or q.get("pretrained_test_accuracy")
    acc["retrained"] = acc["retrained"] or q.get("retrained_test_accuracy")
    rows = []
    for stage, label in (("pretrained", "pretrained"), ("retrained", "retrained"),
                         ("quantized", "post-processed")):
        w = weights.get(stage)
        flat = np.concatenate(list(w.values())) if w else None
        rows.append([label, _pct(acc[stage]),
                     _pct(None if flat is None else np.count_nonzero(flat) / max(flat.size, 1)),
                     "&ndash;" if flat is None else f"{np.unique(flat).size:,}"])
    out = [_table(["stage", "test accuracy", "non-zero share", "distinct values"], rows)]
    n = sum(v.size for v in next(iter(weights.values()), {}).values()) if weights else 0
    sws_file = run.path / SWS_FILE
    facts = [f"covered weights: {n:,} ({4 * n:,} bytes as float32)"]
    total = None
    if sws_file.is_file() and n:
        try:
            total = file_stats(sws_file.read_bytes())["total"]
        except FormatError as e:
            facts.append(f"<code>{SWS_FILE}</code> is not a readable .sws file: {html.escape(str(e))}")
    if total is not None:
        facts.append(f"compressed file <code>{SWS_FILE}</code>: {total['file_bytes']:,} bytes, "
                     f"compression rate CR = 32&middot;values / (8&middot;bytes) = "
                     f"<b>{total['cr_file']:.1f}</b> ({total['cr_paper']:.1f} by the paper's accounting)")
    elif not sws_file.is_file():
        facts.append(f"no compressed file (<code>{SWS_FILE}</code>) in the run folder")
    if q.get("holdout_accuracy") is not None:   # --holdout-size: images no choice of the run saw
        pre = metrics.get("pretrained", {}).get("holdout_accuracy")
        facts.append(f"holdout accuracy (images neither trained on nor used by any choice of the run): "
                     f"post-processed {_pct(q['holdout_accuracy'])}"
                     + (f", pretrained {_pct(pre)}" if pre is not None else ""))
    decision = metrics.get("retrained", {}).get("budget") or {}
    if decision.get("message"):
        facts.append(("<b>warning:</b> " if decision["status"] == "over" else "accuracy budget: ")
                     + html.escape(decision["message"]))
    if q.get("codebook") is not None:
        facts.append(f"codebook ({len(q['codebook'])} values, "
                     f"{q.get('components_before_merge', '?')} components before merging): "
                     + ", ".join(f"{v:.4g}" for v in q["codebook"]))
    out.append("<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>")
    if "quantized" in weights:
        pre = weights.get("pretrained", {})
        rows = []
        for name, w in weights["quantized"].items():
            rows.append([html.escape(name), f"{w.size:,}", f"{np.count_nonzero(w):,}",
                         _pct(np.count_nonzero(w) / max(w.size, 1)), f"{np.unique(w).size:,}",
                         _pct(np.count_nonzero(pre[name]) / max(pre[name].size, 1))
                         if name in pre else "&ndash;"])
        out.append("<h3>Per layer, after post-processing</h3>")
        out.append(_table(["tensor", "size", "non-zero", "share", "distinct values",
                           "share before"], rows))
    return "\n".join(out)


def _settings_section(run: RunDir) -> str:
    config = run.read_json("config.json", {})
    if not config:
        return '<p class="muted">No config.json: the run was not made with the sws command.</p>'
    out = []
    for stage, entry in config.items():
        out.append(f"<h3>{html.escape(stage)}</h3>")
        if "command" in entry:
            out.append(f"<pre>{html.escape(entry['command'], quote=False)}</pre>")
        settings = json.dumps(entry.get("settings", {}), indent=2)
        out.append(f"<details open><summary>settings</summary><pre>"
                   f"{html.escape(settings, quote=False)}</pre></details>")
    return "\n".join(out)


def write_report(run_dir, out=None, redraw: bool = False) -> Path:
    """Draw the run's figures (the per-epoch frames only if missing or ``redraw``) and
    write the HTML page; returns its path (default ``RUN/report.html``)."""
    run = RunDir.open(run_dir)
    figdir = run.path / "figures"
    have_frames = (figdir / "animation.gif").is_file()
    figs = draw_run_figures(run.path, figdir, frames=redraw or not have_frames)
    frames = sorted((figdir / "frames").glob("epoch_*.png"))
    weights = stage_weights(run.path)
    parts = []
    if (figdir / "animation.gif").is_file():
        last = _img(frames[-1], "final epoch", f"Last frame ({frames[-1].stem}).") if frames else ""
        parts.append('<div class="row">' + _img(
            figdir / "animation.gif", "animation of the weights during retraining",
            "Retraining, one frame per epoch: pretrained weight (x) against current weight (y), "
            "marginal histograms (right: log counts), mixture means with bands at ±2 sd "
            "(zero component in red).") + last + "</div>")
    captions = {
        "histograms": "Weight histograms before retraining, after retraining and after "
                      "post-processing; linear (top) and log (bottom) counts.",
        "layer_sparsity": "Share of non-zero weights per tensor.",
        "training_curves": "Retraining: cross-entropy, complexity term and test accuracy per epoch.",
        "mixture": "The mixture prior over the epochs: means, standard deviations and mixing "
                   "proportions (zero component in red).",
    }
    for key, caption in captions.items():
        if key in figs:
            parts.append(_img(figs[key], key.replace("_", " "), caption))
    if not parts:
        parts.append('<p class="muted">No figures: the run has no checkpoints or history yet.</p>')
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>sws report: {html.escape(run.path.name)}</title><style>{CSS}</style></head>
<body>
<h1>Soft weight-sharing: {html.escape(run.path.name)}</h1>
<p class="muted">Run folder <code>{html.escape(str(run.path.resolve()))}</code>; report written {when}.</p>
<h2>Metrics</h2>
{_metrics_section(run, weights)}
<h2>Figures</h2>
{chr(10).join(parts)}
<h2>Command and settings</h2>
{_settings_section(run)}
</body></html>
"""
    path = Path(out) if out else run.path / "report.html"
    atomic_write(path, page.encode("utf-8"))
    return path

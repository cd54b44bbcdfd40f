#!/usr/bin/env python
"""Bring benchmarks/table1 up to date without retraining: rewrite its files in the current format
and add rows made by ``sws`` commands (issue 14).

    python benchmarks/table1_refresh.py [--add NAME=RUN_DIR ...] [--rewrite FILE ...] [--data-dir DIR]

1. Every ``.sws`` file of ``benchmarks/table1/results.json`` is decoded and written again with
   the current writer (format version 3); its tensors must decode bit-exact, so errors and
   sparsity do not change and only the bytes and compression rates are measured again.
2. ``--add NAME=RUN_DIR``: a run folder made by ``sws run`` / ``sws retrain`` + ``sws quantize`` +
   ``sws compress`` becomes a soft weight-sharing row named NAME: its ``model.sws`` is copied to
   ``benchmarks/table1/<model>-sws-<NAME>.sws`` (in the current format) and its test and
   validation errors are measured from that file; the row records the run's commands.
3. ``--rewrite FILE``: other committed files (e.g. benchmarks/runs/defaults/*/model.sws) are
   rewritten in the current format in the same way.
4. TABLE1.md, results.json and the Table 1 section of benchmarks/RESULTS.md are written again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from sws.config import retrain_config
from sws.format import container
from sws.format.stats import file_stats
from sws.runs.inputs import load_splits
from sws.runs.rundir import RunDir
from sws.storage import atomic_write
from sws.study.table1 import HERE, MODELS, _file_result
from sws.study.table1_report import markdown, settled_val_error, write_section

OUT = HERE / "table1"


def rewrite(path: Path) -> tuple[int, int]:
    """Write ``path`` again with the current writer, checked bit-exact; (bytes before, after)."""
    data = path.read_bytes()
    d = container.decode(data)
    sparse = [h["name"] for h in d.header["tensors"] if h["coding"] != "raw"]
    blob = container.encode(d.tensors, d.codebook, sparse, d.header["model"])
    e = container.decode(blob)
    for name, t in d.tensors.items():
        u = e.tensors[name]
        if u.dtype != t.dtype or u.shape != t.shape or u.numpy().tobytes() != t.numpy().tobytes():
            raise SystemExit(f"{path}: tensor {name} does not decode bit-exact; not rewritten")
    if e.header["model"] != d.header["model"]:
        raise SystemExit(f"{path}: the model description changed; not rewritten")
    if blob != data:
        atomic_write(path, blob)
    return len(data), len(blob)


def _overrides(preset: str, settings: dict) -> dict:
    """The run's retraining settings that differ from its preset's (epochs always)."""
    base = dataclasses.asdict(retrain_config(preset))
    out = {"epochs": settings["epochs"]}
    for k, v in settings.items():
        if k == "prior":
            out.update({p: w for p, w in v.items() if base["prior"].get(p) != w})
        elif k not in ("epochs", "seed") and base.get(k) != v:
            out[k] = v
    return out


def run_row(name: str, run_dir: Path, data_dir) -> dict:
    run = RunDir.open(run_dir)
    metrics, config = run.read_json("metrics.json", {}), run.read_json("config.json", {})
    settings = config["retrain"]["settings"]
    command = config["retrain"]["command"]
    preset = next((w for a, w in zip(command.split(), command.split()[1:]) if a == "--preset"), "tutorial")
    meta = run.load("pretrained")[1]
    model = meta["model"]
    data = load_splits(meta["data"], data_dir)
    target = OUT / f"{model}-sws-{name}.sws"
    atomic_write(target, (run.path / "model.sws").read_bytes())
    rewrite(target)
    pre = metrics["pretrained"]
    return {"model": model, "method": "soft weight-sharing", "variant": name, "preset": preset,
            "overrides": _overrides(preset, settings), "retrain_epochs": settings["epochs"],
            "run": str(run.path), "commands": [config[s]["command"] for s in ("pretrain", "retrain", "quantize")
                                              if s in config],
            "pretrained_test_error": pre["test_error"], "pretrained_val_error": pre.get("val_error"),
            **({"pretrained_holdout_error": pre["holdout_error"]} if "holdout_error" in pre else {}),
            "retrained_test_error": metrics["retrained"].get("test_error"),
            "seconds": metrics["retrained"]["seconds"], "budget": metrics["quantized"].get("budget"),
            "dead_unit_weights_dropped": metrics["quantized"].get("dead_unit_weights_dropped", 0),
            "settled_val_error": settled_val_error(run.read_json("history.json", [])),
            **_file_result(target, data["val"], data["test"], data["holdout"]),
            "sws_file": target.name}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--add", action="append", default=[], metavar="NAME=RUN_DIR")
    p.add_argument("--rewrite", nargs="*", default=[], metavar="FILE")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    results = json.loads((OUT / "results.json").read_text())
    rows = results["rows"]
    for r in rows:
        if r.get("sws_file"):
            before, after = rewrite(OUT / r["sws_file"])
            total = file_stats((OUT / r["sws_file"]).read_bytes())["total"]
            r.update(file_bytes=total["file_bytes"], cr_file=total["cr_file"], cr_paper=total["cr_paper"])
            print(f"{r['sws_file']}: {before} -> {after} bytes, CR {r['cr_file']:.1f}")
    for r in rows:   # rows added before the settled error was recorded: from their run folders
        history = Path(r.get("run") or "/nonexistent") / "history.json"
        if r["method"] == "soft weight-sharing" and "settled_val_error" not in r and history.is_file():
            r["settled_val_error"] = settled_val_error(json.loads(history.read_text()))
    for spec in args.add:
        name, _, run_dir = spec.partition("=")
        row = run_row(name, Path(run_dir), args.data_dir)
        rows[:] = [r for r in rows if not (r["model"] == row["model"] and r["variant"] == name)] + [row]
        held = f", holdout {100 * row['holdout_error']:.2f} %" if "holdout_error" in row else ""
        print(f"{row['sws_file']}: test {100 * row['test_error']:.2f} %, val {100 * row['val_error']:.2f} %"
              f"{held}, CR {row['cr_file']:.1f}")
    for f in args.rewrite:
        before, after = rewrite(Path(f))
        metrics = Path(f).parent / "metrics.json"        # a run folder's record of its file
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            if m.get("file", {}).get("path") == Path(f).name:
                total = file_stats(Path(f).read_bytes())["total"]
                m["file"].update(bytes=after, cr_file=total["cr_file"], cr_paper=total["cr_paper"])
                metrics.write_text(json.dumps(m, indent=2) + "\n")
        print(f"{f}: {before} -> {after} bytes")
    ns = argparse.Namespace(argv=results.get("argv", []), data_dir=args.data_dir, val_size=5000,
                            models=list(MODELS), out=OUT, pretrain_seconds={})
    text = markdown(rows, ns, time.perf_counter() - t0)
    (OUT / "results.json").write_text(json.dumps({**results, "rows": rows}, indent=2) + "\n")
    (OUT / "TABLE1.md").write_text(text)
    write_section(HERE / "RESULTS.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

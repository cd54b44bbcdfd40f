#!/usr/bin/env python
"""Reproduce Table 1 of Ullrich et al. (2017) with the baselines, every rate counted in bytes.

    python benchmarks/table1.py                       # the full run (see --help for the budget)
    python benchmarks/table1.py --quick               # a tiny check (seconds)
    sws bench table1 [same options]

Per model: pretrain (cached by config hash under --work), retrain with the prior
for every soft weight-sharing variant (the tutorial's and the paper's presets
and any --variant), quantize, write the ``.sws`` file, evaluate the file; then
Deep Compression (``sws.study.baselines.deep_compression``) and the pruning + k-means
floor, written with the same writer.  Every stage is skipped when its output
exists, so an interrupted run resumes where it stopped.  Settings are chosen on
a validation split held out of the training set (--val-size), or, with
--holdout-size, on a second split that no run trains or chooses on (the runs'
own choices use validation); the test set is only reported.  The markdown
table goes to ``benchmarks/RESULTS.md`` (section
"## Table 1 (issue 4)", followed by --out/NOTES.md when it exists) and, with the
``.sws`` files and results.json, to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from sws.study.table1_report import SECTION, _summary, markdown, settled_val_error, write_section  # noqa: E402,F401
from sws.study.baselines import (DeepCompressionConfig, deep_compression, prune_and_quantize,
                           save_baseline, weight_names)
from sws.config import LR_SCHEDULES, PretrainConfig, QuantizeConfig, retrain_config
from sws.errors import DivergenceError
from sws.format import container as fileformat
from sws.method.files import load
from sws.runs.stages import compress_run
from sws.format.stats import file_stats
from sws.runs.inputs import load_splits
from sws.runs.stages import model_from_checkpoint, run_pretrain, run_quantize, run_retrain
from sws.method.deadunits import drop_dead_units
from sws.runs.rundir import RunDir
from sws.storage import atomic_write
from sws.method.evaluate import evaluate

HERE = Path("benchmarks")  # relative to where it runs: the repository root in a checkout
MODELS = ("lenet-300-100", "lenet-5-caffe")
# the full run's budget (about an hour on 2 CPU cores); --pretrain-epochs / --epochs override.
# A variant retrains for its preset's epochs (tutorial 30, paper 100) capped at RETRAIN_EPOCHS.
PRETRAIN_EPOCHS = {"lenet-300-100": 20, "lenet-5-caffe": 30}
# LeNet-5-Caffe needs the decay to reach the paper's 0.88 % (constant-rate Adam ends noisy)
PRETRAIN_LR_SCHEDULE = {"lenet-300-100": "constant", "lenet-5-caffe": "cosine"}
RETRAIN_EPOCHS = {"lenet-300-100": 100, "lenet-5-caffe": 50}
# the shared settings of the candidates: LeNet-300-100's, the short and the full-length LeNet-5-Caffe
# studies (the short one found that faster log-precisions and mixing let the mixture sharpen)
_L300 = {"lr_weights": 1e-3, "tau": 0.01, "epochs": 60}
_SHORT_L5 = {"lr_weights": 1e-3, "lr_log_precisions": 1e-2, "lr_mixing": 1e-2, "epochs": 15}
# the full-length LeNet-5-Caffe study: what the short one found lets the mixture sharpen (faster
# log-precisions and mixing), every rate annealed to 0 over 50 epochs; tau and pi0 vary
_FULL_L5 = {"lr_weights": 1e-3, "lr_log_precisions": 1e-2, "lr_mixing": 1e-2, "lr_schedule": "cosine",
            "epochs": 50}
# soft weight-sharing variants: name -> (preset, overrides).  The tutorial's and the paper's
# presets, and the candidates tried on LeNet-300-100's and LeNet-5-Caffe's validation splits
# (benchmarks/table1/NOTES.md)
VARIANTS = {
    "tutorial": ("tutorial", {}),
    "paper": ("paper", {}),
    "tau-5e-3": ("tutorial", {"lr_weights": 1e-3, "tau": 0.005, "epochs": 60}),
    "tau-1e-2": ("tutorial", {**_L300}),
    "tau-1e-2-pi0-999": ("tutorial", {**_L300, "pi0": 0.999}),
    "pi0-9995": ("tutorial", {**_L300, "pi0": 0.9995}),
    "pi0-999-80ep": ("tutorial", {**_L300, "pi0": 0.999, "epochs": 80}),
    "pi0-9998": ("tutorial", {**_L300, "pi0": 0.9998}),
    # LeNet-5-Caffe, short runs: the mixture must sharpen within the budget
    "fast-tau-1e-2": ("tutorial", {**_SHORT_L5, "tau": 0.01}),
    "fast-tau-3e-2": ("tutorial", {**_SHORT_L5, "tau": 0.03}),
    "fast-tau-3e-2-30ep": ("tutorial", {**_SHORT_L5, "tau": 0.03, "epochs": 30}),
    "fast-tau-5e-2": ("tutorial", {**_SHORT_L5, "tau": 0.05}),
    # the full-length LeNet-5-Caffe study (_FULL_L5)
    "tau-3e-2-cos": ("tutorial", {**_FULL_L5, "tau": 0.03}),
    "tau-5e-2-cos": ("tutorial", {**_FULL_L5, "tau": 0.05}),
    "tau-3e-2-cos-pi0-999": ("tutorial", {**_FULL_L5, "tau": 0.03, "pi0": 0.999}),
    "tau-3e-2-cos-pi0-9995": ("tutorial", {**_FULL_L5, "tau": 0.03, "pi0": 0.9995}),
    "tau-2e-2-cos-pi0-999": ("tutorial", {**_FULL_L5, "tau": 0.02, "pi0": 0.999}),
    "tau-15e-3-cos-pi0-999": ("tutorial", {**_FULL_L5, "tau": 0.015, "pi0": 0.999}),
    # the paper's settings run on past the divergence guard (components collapse onto each other)
    "paper-no-guard": ("paper", {"guard": False}),
    "pi0-9999": ("tutorial", {**_L300, "pi0": 0.9999}),
    "pi0-9998-cos": ("tutorial", {**_L300, "pi0": 0.9998, "lr_schedule": "cosine"}),
    "pi0-9999-cos": ("tutorial", {**_L300, "pi0": 0.9999, "lr_schedule": "cosine"}),
}
# run by default: both presets and every candidate tried on the validation split (the choice
# among them is made on validation error; benchmarks/table1/NOTES.md).  The LeNet-5-Caffe
# candidates of the first, short session (fast-*) started from another pretrained net.
DEFAULT_VARIANTS = ["tutorial", "paper", "paper-no-guard",
                    *(f"lenet-300-100:{v}" for v in ("tau-5e-3", "tau-1e-2", "tau-1e-2-pi0-999",
                                                     "pi0-999-80ep", "pi0-9995", "pi0-9998",
                                                     "pi0-9999", "pi0-9998-cos", "pi0-9999-cos")),
                    *(f"lenet-5-caffe:{v}" for v in ("tau-3e-2-cos", "tau-5e-2-cos",
                                                     "tau-3e-2-cos-pi0-999", "tau-3e-2-cos-pi0-9995",
                                                     "tau-2e-2-cos-pi0-999", "tau-15e-3-cos-pi0-999"))]


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


# the settings each cache key always covers; fields added to the configs later enter a key only
# when they differ from their default, so a new option does not invalidate the cache
_KEYED = {"PretrainConfig": {"model", "epochs", "batch_size", "lr", "seed", "input_norm",
                             "train_subset", "val_size"},
          "RetrainConfig": {"epochs", "batch_size", "tau", "lr_weights", "lr_means",
                            "lr_log_precisions", "lr_mixing", "seed", "prior"},
          "PriorConfig": {"n_components", "pi0", "init", "init_range", "init_sigma", "zero_alpha",
                          "zero_beta", "alpha", "beta", "cover"},
          "QuantizeConfig": {"merge_threshold"}}


def _settings(cfg) -> dict:
    """A config as the dict its cache key is made of (see ``_KEYED``)."""
    keyed, default = _KEYED.get(type(cfg).__name__), type(cfg)()
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if keyed is None or f.name in keyed or v != getattr(default, f.name):
            out[f.name] = _settings(v) if dataclasses.is_dataclass(v) else v
    return out


def _log(msg: str) -> None:
    print(msg, flush=True)


def _parse_variant(text: str) -> tuple[str, tuple[str, dict]]:
    """'NAME=PRESET[,key=value...]' -> (NAME, (PRESET, overrides))."""
    name, _, rest = text.partition("=")
    preset, *pairs = rest.split(",")
    over = {}
    for pair in pairs:
        k, _, v = pair.partition("=")
        try:
            over[k] = json.loads(v)
        except json.JSONDecodeError:
            over[k] = v
    return name, (preset or "tutorial", over)


def pretrained_run(args, model: str) -> tuple[RunDir, dict]:
    """The cached pretrained run for this config (trained now if missing)."""
    cfg = PretrainConfig(model=model, epochs=args.pretrain_epochs or PRETRAIN_EPOCHS[model],
                         lr_schedule=args.pretrain_lr_schedule or PRETRAIN_LR_SCHEDULE[model],
                         train_subset=args.train_subset, val_size=args.val_size, seed=args.seed,
                         holdout_size=args.holdout_size)
    path = args.work / f"pretrained-{_hash(_settings(cfg))}"
    run = RunDir(path)
    if not run.has("pretrained"):
        _log(f"{model}: pretraining {cfg.epochs} epochs -> {path}")
        path.mkdir(parents=True, exist_ok=True)
        run.write_json("config.json", {"pretrain": {"command": "benchmarks/table1.py",
                                                    "settings": dataclasses.asdict(cfg)}})
        run_pretrain(run, cfg, args.data_dir, quiet=True)
    else:
        _log(f"{model}: cached pretrained net {path}")
    return run, run.read_json("metrics.json", {}).get("pretrained", {})


def _file_result(path: Path, val, test, holdout=None) -> dict:
    """Test and validation error (and the holdout's, given one), weight sparsity and compression
    rates of a .sws file."""
    net = load(path)
    stats = file_stats(path.read_bytes())["total"]
    names = weight_names(net)
    sd = net.state_dict()
    nz = sum(int(torch.count_nonzero(sd[n])) for n in names) / sum(sd[n].numel() for n in names)
    distinct = int(torch.unique(torch.cat([sd[n].reshape(-1) for n in names])).numel())
    return {"test_error": evaluate(net, test)["error"],
            "val_error": evaluate(net, val)["error"] if val is not None else None,
            **({"holdout_error": evaluate(net, holdout)["error"]} if holdout is not None else {}),
            "nonzero_share": nz, "distinct_values": distinct, "file_bytes": stats["file_bytes"],
            "cr_file": stats["cr_file"], "cr_paper": stats["cr_paper"]}


def _cached(result_path: Path, data) -> dict:
    """A finished row.  A file written before the current post-processing and format (format
    version 1, or dead units not yet dropped) is brought up to date first: the net decoded from
    it, ``drop_dead_units`` (lossless), written again with the current writer, and its numbers
    measured again."""
    res = json.loads(result_path.read_text())
    path = result_path.parent / "model.sws"
    if "diverged" in res or "dead_unit_weights_dropped" in res:
        return res
    old = fileformat.read(path)
    net = load(path)
    res["dead_unit_weights_dropped"] = drop_dead_units(net)
    sparse = [h["name"] for h in old.header["tensors"] if h["coding"] != "raw"]
    atomic_write(path, fileformat.encode(net.state_dict(), old.codebook, sparse, old.header["model"]))
    res.update(_file_result(path, *data[1:]))
    result_path.write_text(json.dumps(res, indent=2) + "\n")
    _log(f"{res['model']} {res['variant']}: {path} rewritten (format version {fileformat.VERSION}, "
         f"{res['dead_unit_weights_dropped']} weights of dead units dropped)")
    return res


def sws_variant(args, model, pre_run, variant, spec, data) -> dict:
    """Retrain, quantize and compress one variant in its own run folder (resumable)."""
    preset, over = spec
    over = dict(over)
    cap = (args.epochs.get(f"{model}:{variant}") or args.epochs.get(model) or args.epochs.get("")
           or RETRAIN_EPOCHS[model])
    over["epochs"] = min(over.get("epochs") or retrain_config(preset).epochs, cap)
    qcfg = QuantizeConfig(float(over.get("merge_threshold", QuantizeConfig.merge_threshold)))
    rcfg = retrain_config(preset, seed=args.seed,
                          **{k: v for k, v in over.items() if k not in ("merge_threshold", "guard")})
    guard = bool(over.get("guard", True))   # False: run on through collapsed components
    keys = [_hash({"pretrained": pre_run.path.name, "retrain": _settings(rcfg),
                   "quantize": _settings(qcfg), **({} if guard else {"guard": False})}),
            _hash({"pretrained": pre_run.path.name, "retrain": dataclasses.asdict(rcfg),
                   "quantize": dataclasses.asdict(qcfg)})]   # the keys of earlier versions
    folders = [args.work / "runs" / model / f"sws-{variant}-{k}" for k in keys]
    run = RunDir(next((f for f in folders if f.is_dir()), folders[0]))
    result_path = run.path / "result.json"
    if result_path.is_file():
        _log(f"{model} sws {variant}: done before ({run.path})")
        return _cached(result_path, data)
    run.path.mkdir(parents=True, exist_ok=True)
    if not run.has("pretrained"):
        tensors, meta = pre_run.load("pretrained")
        run.save("pretrained", tensors, meta)
        run.update_json("metrics.json", "pretrained", pre_run.read_json("metrics.json", {})["pretrained"])
    if not run.has("retrained"):
        _log(f"{model} sws {variant}: retraining {rcfg.epochs} epochs ({preset} preset{', ' if over else ''}"
             f"{', '.join(f'{k}={v}' for k, v in over.items())})")
        run.update_json("config.json", "retrain", {"command": "benchmarks/table1.py",
                                                   "settings": dataclasses.asdict(rcfg)})
        resume = (run.path / "state-retrain.safetensors").is_file()   # interrupted: continue
        try:
            run_retrain(run, None if resume else rcfg, args.data_dir, quiet=True, resume=resume,
                        guard=guard)
        except DivergenceError as e:   # the outcome of these settings: a row that says so
            res = {"model": model, "method": "soft weight-sharing", "variant": variant,
                   "preset": preset, "overrides": over, "retrain_epochs": rcfg.epochs,
                   "run": str(run.path), "diverged": str(e).split(" (last good state")[0]}
            run.write_json("result.json", res)
            _log(f"{model} sws {variant}: diverged: {res['diverged']}")
            return res
    if not run.has("quantized"):
        run_quantize(run, qcfg, args.data_dir)
    compress_run(run.path, run.path / "model.sws")
    metrics = run.read_json("metrics.json", {})
    res = {"model": model, "method": "soft weight-sharing", "variant": variant, "preset": preset,
           "overrides": over, "retrain_epochs": rcfg.epochs, "run": str(run.path),
           "pretrained_test_error": 1 - metrics["pretrained"]["test_accuracy"],
           "pretrained_val_error": 1 - metrics["pretrained"].get("val_accuracy", float("nan")),
           "retrained_test_error": 1 - metrics["retrained"]["test_accuracy"],
           "retrained_val_error": 1 - metrics["retrained"].get("val_accuracy", float("nan")),
           "seconds": metrics["retrained"]["seconds"],
           "dead_unit_weights_dropped": metrics["quantized"].get("dead_unit_weights_dropped", 0),
           "settled_val_error": settled_val_error(run.read_json("history.json", [])),
           **_file_result(run.path / "model.sws", *data[1:])}
    run.write_json("result.json", res)
    _log(f"{model} sws {variant}: {_summary(res)}")
    return res


def baseline(args, model, pre_run, kind: str, data) -> dict:
    """Deep Compression ('deep-compression') or the floor ('prune-kmeans'), resumable."""
    cfg = DeepCompressionConfig(prune_steps=args.dc_steps, epochs_per_step=args.dc_epochs,
                                finetune_epochs=args.dc_finetune_epochs, seed=args.seed)
    key = _hash({"pretrained": pre_run.path.name, "kind": kind,
                 "cfg": dataclasses.asdict(cfg) if kind == "deep-compression" else
                 {k: getattr(cfg, k) for k in ("clusters_conv", "clusters_fc", "kmeans_iters")}})
    folder = args.work / "runs" / model / f"{kind}-{key}"
    result_path = folder / "result.json"
    if result_path.is_file():
        _log(f"{model} {kind}: done before ({folder})")
        return _cached(result_path, data)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = pre_run.load("pretrained")
    net = model_from_checkpoint(tensors, meta)
    train, val, test, holdout = data
    pre = pre_run.read_json("metrics.json", {})["pretrained"]
    t0 = time.perf_counter()
    if kind == "deep-compression":
        _log(f"{model} {kind}: {cfg.prune_steps} pruning steps x {cfg.epochs_per_step} epochs, "
             f"k-means, {cfg.finetune_epochs} fine-tuning epochs")
        info = deep_compression(net, model, train, cfg, folder, log=_log)
        label = "Deep Compression (ours)"
    else:
        info = prune_and_quantize(net, model, cfg)
        label = "pruning + k-means, no retraining (ours)"
    seconds = time.perf_counter() - t0
    before = sum(int(p.ne(0).sum()) for p in net.parameters())
    save_baseline(folder / "model.sws", net, model, meta.get("input_norm", "none"))   # drops dead units
    res = {"dead_unit_weights_dropped": before - sum(int(p.ne(0).sum()) for p in net.parameters()),
           "model": model, "method": label, "variant": kind, "config": dataclasses.asdict(cfg),
           "keep": info["keep"], "clusters": info["clusters"], "run": str(folder),
           "pretrained_test_error": 1 - pre["test_accuracy"],
           "pretrained_val_error": 1 - pre.get("val_accuracy", float("nan")), "seconds": seconds,
           **_file_result(folder / "model.sws", val, test, holdout)}
    (folder / "result.json").write_text(json.dumps(res, indent=2) + "\n")
    _log(f"{model} {kind}: {_summary(res)}")
    return res


def parse_args(argv):
    p = argparse.ArgumentParser(prog="table1", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--epochs", nargs="+", default=[], metavar="[MODEL[:VARIANT]=]N",
                   help="cap on the sws variants' retraining epochs (each its preset's or its "
                   f"own), for all, per model or per model and variant [{RETRAIN_EPOCHS}]")
    p.add_argument("--pretrain-epochs", type=int, default=0, help=f"[per model: {PRETRAIN_EPOCHS}]")
    p.add_argument("--pretrain-lr-schedule", choices=LR_SCHEDULES, default=None,
                   help=f"[per model: {PRETRAIN_LR_SCHEDULE}]")
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (quick checks)")
    p.add_argument("--val-size", type=int, default=5000, help="held-out validation images for tuning")
    p.add_argument("--holdout-size", type=int, default=0,
                   help="training images set aside from training and every choice of the runs; the rows "
                   "are then chosen on their error there (sws.study.table1_report.choose_on_validation)")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   help=f"sws variants to run, of {list(VARIANTS)} and any --variant; "
                   "MODEL:VARIANT runs it for that model only")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=PRESET[,k=v...]",
                   help="an extra sws variant, e.g. 'tau5=tutorial,tau=0.005,lr_weights=0.001'")
    p.add_argument("--dc-steps", type=int, default=3, help="Deep Compression pruning steps")
    p.add_argument("--dc-epochs", type=int, default=2, help="masked retraining epochs per step")
    p.add_argument("--dc-finetune-epochs", type=int, default=1, help="centroid fine-tuning epochs")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=HERE / "table1")
    p.add_argument("--work", type=Path, default=HERE / "cache", help="cache of pretrained nets and runs")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test: 2,000 "
                   "training images, 1 pretraining and 2 retraining epochs, LeNet-300-100")
    args = p.parse_args(argv)
    args.argv = list(argv)
    try:
        args.epochs = {m: int(n) for m, _, n in (e.rpartition("=") for e in args.epochs)}
    except ValueError:
        p.error(f"--epochs takes N or MODEL=N, got {args.epochs}")
    if args.quick:
        args.train_subset = args.train_subset or 2000
        args.val_size = min(args.val_size, 500)
        args.pretrain_epochs = args.pretrain_epochs or 1
        args.epochs = args.epochs or {"": 2}
        args.dc_steps, args.dc_epochs = min(args.dc_steps, 2), min(args.dc_epochs, 1)
        if "--models" not in argv:
            args.models = ["lenet-300-100"]
    extra = dict(_parse_variant(v) for v in args.variant)
    args.specs = {**VARIANTS, **extra}
    for name in extra:   # a --variant runs even when --variants does not name it
        if name not in (v.split(":")[-1] for v in args.variants):
            args.variants.append(name)
    unknown = [v for v in args.variants if v.split(":")[-1] not in args.specs]
    if unknown:
        p.error(f"unknown variants {unknown}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, args.pretrain_seconds = [], {}
    for model in args.models:
        pre_run, pre_metrics = pretrained_run(args, model)
        args.pretrain_seconds[model] = pre_metrics.get("seconds", 0.0)
        s = load_splits(pre_run.load("pretrained")[1]["data"], args.data_dir)
        data = (s["train"], s["val"], s["test"], s["holdout"])
        if not args.no_baselines:   # first: they take a few epochs, the variants many
            for kind in ("prune-kmeans", "deep-compression"):
                rows.append(baseline(args, model, pre_run, kind, data))
        for v in args.variants:
            only, _, v = v.rpartition(":")
            if only in ("", model):
                rows.append(sws_variant(args, model, pre_run, v, args.specs[v], data))
    for r in rows:
        if "diverged" in r:
            continue
        name = f"{r['model']}-{'sws-' if r['method'] == 'soft weight-sharing' else ''}{r['variant']}.sws"
        shutil.copyfile(Path(r["run"]) / "model.sws", args.out / name)
        r["sws_file"] = name
    wall = time.perf_counter() - t0
    text = markdown(rows, args, wall)
    (args.out / "results.json").write_text(json.dumps({"argv": args.argv, "wall_seconds": wall,
                                                       "rows": rows}, indent=2) + "\n")
    (args.out / "TABLE1.md").write_text(text)
    write_section(args.results, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

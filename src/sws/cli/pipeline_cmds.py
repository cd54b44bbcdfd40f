"""The pipeline's commands: pretrain, retrain, quantize, evaluate, run."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import click

from sws.cli import (
    _quantize_cfg,
    _budget_status,
    _echo_metrics,
    _options,
    _no_settings_with_resume,
    _pretrain_cfg,
    _print_report,
    _record_command,
    _refuse_interrupted,
    _resume_hint,
    _retrain_cfg,
    cli,
    data_option,
    figures_option,
    force_option,
    guard_option,
    merge_option,
    pretrain_options,
    quiet_option,
    resume_option,
    retrain_options,
)
from sws.cli.file_cmds import _draw_figures, _write_sws
from sws.config import PretrainConfig, QuantizeConfig, RetrainConfig, from_dict
from sws.errors import ConfigError, DataError, RunDirError, SwsError
from sws.runs.stages import evaluate_path, run_pretrain, run_quantize, run_retrain
from sws.runs.rundir import RunDir


def new_run_options(*settings):
    """The options of a command that starts a new run folder from scratch (pretrain, run):
    --out, the given settings, then batch size, seed, data, --force and --quiet."""
    return _options(
        click.option("--out", type=click.Path(path_type=Path), default=None, help="New run folder."),
        *settings,
        click.option("--batch-size", type=int, default=256, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        data_option, force_option, quiet_option)


@contextlib.contextmanager
def _new_run(out, force: bool):
    """``RunDir.create(out, force)`` for a new run; a folder this command created is removed
    again when its data or settings are refused before anything but the recorded command was
    written, so the same command runs once they are mended (no stub left to --force)."""
    existed = Path(out).exists()
    run = RunDir.create(out, force)
    try:
        yield run
    except (DataError, ConfigError):
        if not existed and all(p.name == "config.json" for p in run.path.iterdir()):
            shutil.rmtree(run.path, ignore_errors=True)
        raise


@cli.command("pretrain")
@new_run_options(pretrain_options)
@resume_option
@guard_option
def pretrain_cmd(out, model, data, weights, pretrain_epochs, pretrain_lr, pretrain_lr_schedule, input_norm,
                 weight_init, pretrain_augment, train_subset, val_size, holdout_size, batch_size, seed, data_dir,
                 force, quiet, resume, guard):
    """Train a reference network with plain cross-entropy."""
    if resume is not None:
        _no_settings_with_resume()
        run = RunDir.open(resume)
        if run.complete("pretrained") and not run.has_state("pretrain"):
            raise RunDirError(f"{run.path}: pretraining already finished; nothing to resume")
        with _resume_hint("pretrain", run):
            _echo_metrics("pretrained", run_pretrain(run, None, data_dir, quiet, resume=True, guard=guard))
        return
    if out is None:
        raise click.UsageError("pass --out RUN_DIR (a new run folder) or --resume RUN_DIR")
    cfg = _pretrain_cfg(model, data, pretrain_epochs, pretrain_lr, pretrain_lr_schedule, input_norm, weight_init,
                        train_subset, val_size, batch_size, seed, augment=pretrain_augment,
                        holdout_size=holdout_size)
    with _new_run(out, force) as run:
        _record_command(run, "pretrain", vars(cfg) | {"weights": str(weights) if weights else None})
        with _resume_hint("pretrain", run):
            _echo_metrics("pretrained", run_pretrain(run, cfg, data_dir, quiet, guard=guard, weights=weights))


@cli.command("retrain")
@click.argument("run_dir", type=click.Path(path_type=Path), required=False)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write into a new run folder (the pretrained net is copied) instead of RUN_DIR.")
@retrain_options
@merge_option
@click.option("--batch-size", type=int, default=None)
@click.option("--seed", type=int, default=None)
@data_option
@force_option
@quiet_option
@figures_option
@resume_option
@guard_option
def retrain_cmd(run_dir, out, preset, merge_threshold, drop_dead_units, finetune_epochs, finetune_lr, batch_size,
                seed, data_dir, force, quiet,
                figures, resume, guard, **kw):
    """Retrain a pretrained run with the Gaussian-mixture prior.

    Exit status 3: no retrained state's post-processed network met the accuracy budget (the
    state with the lowest validation error was kept)."""
    import dataclasses
    if resume is not None:
        if run_dir is not None:
            raise click.UsageError("give RUN_DIR or --resume RUN_DIR, not both")
        _no_settings_with_resume()
        run = RunDir.open(resume)
        if run.complete("retrained") and not run.has_state("retrain"):
            raise RunDirError(f"{run.path}: retraining already finished; nothing to resume")
        with _resume_hint("retrain", run):
            _echo_metrics("retrained", run_retrain(run, None, data_dir, quiet, snapshots=figures,
                                                   resume=True, guard=guard))
        if figures:
            _draw_figures(run)
        return _budget_status(run, say=True)
    if run_dir is None:
        raise click.UsageError("missing RUN_DIR (or --resume RUN_DIR)")
    cfg = _retrain_cfg(preset, batch_size, seed, **kw)
    src = RunDir.open(run_dir)
    src.require("pretrained", "run 'sws pretrain' first")
    if out is not None:
        run = RunDir.create(out, force)
        tensors, meta = src.load("pretrained")
        run.save("pretrained", tensors, meta)
        if "pretrained" in src.read_json("metrics.json", {}):
            run.update_json("metrics.json", "pretrained", src.read_json("metrics.json", {})["pretrained"])
    else:
        run = src
        run.refuse_overwrite("retrained", force)
        _refuse_interrupted(run, "retrain", "retrain", force)
    qcfg = _quantize_cfg(merge_threshold, drop_dead_units, finetune_epochs, finetune_lr, cfg.budget)
    _record_command(run, "retrain", dataclasses.asdict(cfg))
    with _resume_hint("retrain", run):
        _echo_metrics("retrained", run_retrain(run, cfg, data_dir, quiet, snapshots=figures, guard=guard,
                                               qcfg=qcfg))
    if figures:
        _draw_figures(run)
    return _budget_status(run, say=True)


@cli.command("quantize")
@click.argument("run_dir", type=click.Path(path_type=Path))
@merge_option
@data_option
@force_option
def quantize_cmd(run_dir, merge_threshold, drop_dead_units, finetune_epochs, finetune_lr, data_dir, force):
    """Post-process a retrained run: merge components, snap weights to the codebook.

    Exit status 3: the post-processed network is over the accuracy budget."""
    run = RunDir.open(run_dir)
    run.require("retrained", "run 'sws retrain' first")
    budget = run.load("retrained")[1].get("retrain", {}).get("budget", False)
    cfg = _quantize_cfg(merge_threshold, drop_dead_units, finetune_epochs, finetune_lr, budget)
    run.refuse_overwrite("quantized", force)
    _record_command(run, "quantize", vars(cfg))
    _print_report(run_quantize(run, cfg, data_dir))
    return _budget_status(run)


@cli.command("evaluate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--model", "model_ref", default=None, metavar="PKG.MODULE:FUNCTION",
              help="For a .sws file of your own network: the function building it [recorded in the file].")
@click.option("--data", default=None, metavar="PKG.MODULE:FUNCTION",
              help="For a .sws file of your own network: your data function (its test set, else its "
                   "validation set, is scored).")
@data_option
def evaluate_cmd(path, model_ref, data, data_dir):
    """Scores of a run folder's checkpoints, of one checkpoint file or of a .sws file."""
    if not path.exists():
        raise SwsError(f"{path}: no such file or folder")
    if path.suffix == ".sws":
        from sws.runs.stages import evaluate_file
        results = evaluate_file(path, data_dir, data=data, model_ref=model_ref)
    else:
        results = evaluate_path(path, data_dir)
    for stage, m in results.items():
        score = (f"accuracy {m['accuracy']:.4f}  error {100 * m['error']:.2f}%" if "accuracy" in m
                 else f"loss {m['loss']:.4g}")
        click.echo(f"{stage:<11} {score}  non-zero {100 * m['nonzero_share']:.2f}%  "
                   f"distinct values {m['distinct_values']}")


@cli.command("run")
@new_run_options(pretrain_options, retrain_options, merge_option)
@figures_option
@resume_option
@guard_option
def run_cmd(out, model, data, weights, pretrain_epochs, pretrain_lr, pretrain_lr_schedule, input_norm,
            weight_init, pretrain_augment, train_subset, val_size, holdout_size, merge_threshold, drop_dead_units,
            finetune_epochs, finetune_lr, preset, batch_size, seed,
            data_dir, force, quiet, figures, resume, guard, **kw):
    """The whole pipeline: pretrain, retrain with the prior, quantize, write RUN/model.sws.

    Exit status 0: done; 2: bad input; 3: no retrained state's post-processed network met the
    accuracy budget (the file holds the state with the lowest validation error, and one line
    says so); 130/143: interrupted (continue with --resume)."""
    import dataclasses
    if resume is not None:
        _no_settings_with_resume()
        return _resume_run(RunDir.open(resume), data_dir, quiet, figures, guard)
    if out is None:
        raise click.UsageError("pass --out RUN_DIR (a new run folder) or --resume RUN_DIR")
    pcfg = _pretrain_cfg(model, data, pretrain_epochs, pretrain_lr, pretrain_lr_schedule, input_norm, weight_init,
                         train_subset, val_size, batch_size, seed, budget=kw.get("budget"),
                         augment=pretrain_augment, holdout_size=holdout_size)
    rcfg = _retrain_cfg(preset, batch_size, seed, **kw)
    qcfg = _quantize_cfg(merge_threshold, drop_dead_units, finetune_epochs, finetune_lr, rcfg.budget)
    with _new_run(out, force) as run:
        _record_command(run, "run", {"pretrain": vars(pcfg), "retrain": dataclasses.asdict(rcfg),
                                     "quantize": vars(qcfg), "weights": str(weights) if weights else None})
        with _resume_hint("run", run):
            _echo_metrics("pretrained", run_pretrain(run, pcfg, data_dir, quiet, guard=guard, weights=weights))
            _echo_metrics("retrained", run_retrain(run, rcfg, data_dir, quiet, snapshots=figures, guard=guard,
                                                   qcfg=qcfg))
    _print_report(run_quantize(run, qcfg, data_dir))
    if figures:
        _draw_figures(run)
    _write_sws(run.path, run.path / "model.sws")
    return _budget_status(run)


def _resume_run(run: RunDir, data_dir, quiet, figures, guard):
    """Continue 'sws run' where it stopped: the unfinished stages, with the recorded settings."""
    rec = run.read_json("config.json", {}).get("run")
    if not isinstance(rec, dict) or not isinstance(rec.get("settings"), dict):
        raise RunDirError(f"{run.path}: not made by 'sws run' (config.json has no 'run' entry); "
                          "resume its stage with 'sws pretrain --resume' or 'sws retrain --resume'")
    settings = rec["settings"]
    try:
        pcfg = from_dict(PretrainConfig, settings["pretrain"])
        rcfg = from_dict(RetrainConfig, settings["retrain"])
        qcfg = from_dict(QuantizeConfig, settings["quantize"])
    except (KeyError, TypeError) as e:
        raise RunDirError(f"{run.path / 'config.json'}: incomplete 'run' settings ({e})") from None
    with _resume_hint("run", run):
        if not run.complete("pretrained") or run.has_state("pretrain"):
            again = run.has_state("pretrain")
            _echo_metrics("pretrained", run_pretrain(run, None if again else pcfg, data_dir, quiet,
                                                     resume=again, guard=guard, weights=settings.get("weights")))
        if not run.complete("retrained") or run.has_state("retrain") or not run.is_current("retrained"):
            again = run.has_state("retrain")
            _echo_metrics("retrained", run_retrain(run, None if again else rcfg, data_dir, quiet,
                                                   snapshots=figures, resume=again, guard=guard, qcfg=qcfg))
    if not run.complete("quantized") or not run.is_current("quantized"):
        _print_report(run_quantize(run, qcfg, data_dir))
    if figures:
        _draw_figures(run)
    made = run.read_json("metrics.json", {}).get("file", {}).get("quantized_sha256")
    if not (run.path / "model.sws").is_file() or made != run.digest("quantized"):
        _write_sws(run.path, run.path / "model.sws")
    return _budget_status(run)

"""The pipeline's stages on a run folder: pretrain, retrain, quantize, compress, evaluate.

Each stage reads its input checkpoint from the run folder, does its work with
the method (``sws.method``: the one loop, post-processing and writer) and
writes its checkpoint, history records and metrics back.  The network and the
data are named in the run folder by reference (a reference net's name and
MNIST settings, or ``PKG.MODULE:FUNCTION`` of a user's model and data
functions; ``sws.zoo.refs``), so every later command rebuilds the same
objects.  Each checkpoint records the sha256 of the one it was made from, and
a new stage removes what was made from its predecessor (``RunDir``), so a run
folder never serves a stale file.  The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path


from sws.config import PretrainConfig, QuantizeConfig, RetrainConfig, from_dict
from sws.errors import CheckpointError, ConfigError, DivergenceError, SwsError, TrainingInterrupted
from sws.method.evaluate import evaluate
from sws.method.files import check_storable, load, save
from sws.method.loop import pretrain, retrain
from sws.method.postprocess import layer_stats, postprocess_
from sws.method.snap import Snap
from sws.method.surface import select_parameters
from sws.method.watch import Budget, kept_record
from sws.prior import GaussianMixturePrior
from sws.runs.checkpoint import load_checkpoint, save_checkpoint
from sws.runs.inputs import (PRIOR_PREFIX, covered_of, check_fits, data_settings, header_of, load_data,
                             load_splits, load_test, load_weights, model_from_checkpoint, prior_from_checkpoint,
                             scoring_set)
from sws.runs.rundir import RunDir
from sws.zoo.refs import resolve_model

__all__ = ["run_pretrain", "run_retrain", "run_quantize", "compress_run", "evaluate_path", "evaluate_file",
           "model_from_checkpoint", "prior_from_checkpoint", "covered_of", "load_data", "load_test"]

def _history_writer(run: RunDir, stage: str, records: list[dict] | None = None, then=None):
    records = list(records or [])

    def on_epoch(rec):
        records.append(rec)
        run.set_history(stage, records)
        return then(rec) if then is not None else None
    return on_epoch


def _resumable(run: RunDir, stage: str, parent: str, resume: bool):
    """(resume state or None, on_state callback, error wrapper) for a stage's loop.

    A state records the checkpoint it started from; resuming it on another one is refused."""
    state = run.load_state(stage) if resume else None
    path = run.state_path(stage).with_suffix(".safetensors")
    source = run.digest(parent) if run.has(parent) else None
    if state is not None and state[1].get("source_sha256", source) != source:
        raise CheckpointError(f"{path}: this {stage} was started from another {parent} checkpoint "
                              "than the one in the run folder; start it again with --force")

    def on_state(tensors, meta):
        run.save_state(stage, tensors, {**meta, "source_sha256": source})

    def wrap(e: SwsError):
        if isinstance(e, TrainingInterrupted):
            return TrainingInterrupted(f"{e} in {path}", e.signum)
        if isinstance(e, DivergenceError):
            return DivergenceError(f"{e} in {path}")
        if isinstance(e, CheckpointError) and str(e).startswith("training state:"):
            return CheckpointError(f"{path}{str(e)[len('training state'):]}")
        return e
    return state, on_state, wrap


def _stage_config(cls, state, cfg, stage: str, where):
    """The settings to run with: on resume, those recorded in the state."""
    if state is None:
        cfg.validate()
        return cfg
    try:
        recorded = from_dict(cls, state[1]["config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: the {stage} state records no settings ({e})") from None
    recorded.validate()
    return recorded


def run_pretrain(run: RunDir, cfg: PretrainConfig | None, data_dir=None, quiet=False,
                 resume: bool = False, guard: bool = True, weights=None) -> dict:
    """Pretrain into ``run`` (or, with ``weights``, start from that file instead of training);
    with ``resume``, continue from ``RUN/state-pretrain`` with its settings."""
    state, on_state, wrap = _resumable(run, "pretrain", "", resume)
    cfg = _stage_config(PretrainConfig, state, cfg, "pretrain", run.state_path("pretrain"))
    data = data_settings(cfg)
    splits = load_splits(data, data_dir)
    train, val, test = splits["train"], splits["val"], splits["test"]
    model = resolve_model(cfg.model, cfg.input_norm, seed=cfg.seed, init=cfg.weight_init)
    check_fits(model, train, cfg.model)
    check_storable(model)                  # the file at the end must hold it: fail now, not then
    if state is None:
        run.invalidate_after(None)
    t0 = time.perf_counter()
    if weights is not None:
        load_weights(model, weights)
        history = [{"stage": "pretrain", "epoch": 0, "weights": str(weights),
                    **{f"{s}_{k}": v for s, d in (("val", val), ("test", test)) if d is not None
                       for k, v in evaluate(model, d).items()}}]
        run.set_history("pretrain", history)
    else:
        writer = _history_writer(run, "pretrain", state[1].get("history") if state else None)
        try:
            history = pretrain(model, train, cfg, val, test, quiet, writer, resume=state,
                               on_state=on_state, guard=guard)
        except (TrainingInterrupted, DivergenceError, CheckpointError) as e:
            raise wrap(e) from None
    metrics = {"seconds": time.perf_counter() - t0, "parameters": sum(p.numel() for p in model.parameters()),
               **{k: v for k, v in history[-1].items() if k.startswith(("test_", "val_"))},
               **_holdout_scores(model, splits["holdout"])}
    meta = {"model": cfg.model, "input_norm": cfg.input_norm, "data": data,
            "pretrain": dataclasses.asdict(cfg) | ({"weights": str(weights)} if weights else {}),
            "metrics": metrics}
    run.save_stage("pretrained", model.state_dict(), meta)
    run.update_json("metrics.json", "pretrained", metrics)
    run.remove_state("pretrain")
    return metrics


def _snapshot_writer(run: RunDir, prior, covered: dict, then, initial: bool = True):
    """Per-epoch snapshots of the covered weights and the prior, for figures."""
    folder = run.path / "snapshots"
    folder.mkdir(exist_ok=True)

    def save_snapshot(epoch):
        tensors = {k: v.detach() for k, v in covered.items()}
        tensors.update({PRIOR_PREFIX + k: v for k, v in prior.state_dict().items()})
        save_checkpoint(folder / f"epoch_{epoch:03d}", tensors, {"model": "snapshot", "epoch": epoch})

    def on_epoch(rec):
        save_snapshot(rec["epoch"])
        return then(rec)
    if initial:
        save_snapshot(0)
    return on_epoch


def run_retrain(run: RunDir, cfg: RetrainConfig | None, data_dir=None, quiet=False,
                snapshots: bool = False, resume: bool = False, guard: bool = True,
                qcfg: QuantizeConfig | None = None) -> dict:
    """Retrain the run's pretrained net with the prior.

    With ``snapshots``, the covered weights and the prior are saved after every
    epoch (and before the first) as ``RUN/snapshots/epoch_NNN.safetensors``;
    figures are drawn from those files, outside the training loop.  With
    ``resume``, retraining continues from ``RUN/state-retrain`` with the
    settings recorded there, bit for bit as if it had not stopped.

    Every epoch the post-processed network (``qcfg``'s merge threshold and dead units) is
    evaluated on the validation split; with ``cfg.budget`` the state kept is the one with the
    highest CR within ``cfg.max_error_increase`` points of the pretrained net's validation error
    (``sws.method.watch.Budget``); ``metrics["budget"]`` records the decision.
    """
    run.require("pretrained", "run 'sws pretrain' first")
    state, on_state, wrap = _resumable(run, "retrain", "pretrained", resume)
    cfg = _stage_config(RetrainConfig, state, cfg, "retrain", run.state_path("retrain"))
    tensors, meta = run.load("pretrained")
    model = model_from_checkpoint(tensors, meta, str(run.path / "pretrained.safetensors"))
    train, val, test = load_data(meta["data"], data_dir)
    check_storable(model)                  # the budget encodes it every epoch, compress writes it
    covered = covered_of(model, cfg.prior)   # (refuses what it cannot cover) before anything is removed
    if state is None:
        run.invalidate_after("pretrained")
    prior = GaussianMixturePrior(cfg.prior, list(covered.values()))
    if state is not None and "watch" in state[1]:
        qcfg = from_dict(QuantizeConfig, state[1]["watch"])
    qcfg = qcfg or QuantizeConfig()
    budget = Budget(model, prior, covered, val, threshold=qcfg.merge_threshold, dead_units=qcfg.drop_dead_units,
                    max_error_increase=cfg.max_error_increase if cfg.budget else None,
                    patience=cfg.patience if cfg.budget else 0, header=header_of(meta), tau_control=cfg.tau_control)
    t0 = time.perf_counter()
    on_epoch = _history_writer(run, "retrain", state[1].get("history") if state else None)
    if snapshots:
        on_epoch = _snapshot_writer(run, prior, covered, on_epoch, initial=state is None)

    def on_state_watch(tensors, meta):
        on_state(tensors, {**meta, "watch": dataclasses.asdict(qcfg)})
    try:
        history = retrain(model, prior, train, cfg, val, test, quiet, on_epoch, covered=list(covered.values()),
                          watch=budget, resume=state, on_state=on_state_watch, guard=guard)
    except (TrainingInterrupted, DivergenceError, CheckpointError) as e:
        raise wrap(e) from None
    decision = budget.decide()
    kept = kept_record(history, decision)
    metrics = {"seconds": time.perf_counter() - t0, "epochs_run": len(history), "kept_epoch": kept["epoch"],
               **{k: v for k, v in kept.items() if k.startswith(("test_", "val_", "pp_"))},
               "nonzero_share_within_2sd": kept.get("share_within_2sd_of_zero"), "budget": decision,
               "snapped": bool(kept.get("snap"))}   # kept from the snap phase: scored through the snap
    out = dict(model.state_dict())
    out.update({PRIOR_PREFIX + k: v for k, v in prior.state_dict().items()})
    run.save_stage("retrained", out, {**{k: meta[k] for k in ("model", "input_norm", "data")},
                                      "retrain": dataclasses.asdict(cfg), "watch": dataclasses.asdict(qcfg),
                                      "metrics": metrics})
    run.update_json("metrics.json", "retrained", metrics)
    run.remove_state("retrain")
    return metrics


def _scores(rec: dict, split: str, prefix: str = "") -> dict:
    return {f"{prefix}{split}_{k}": v for k, v in rec.items()}


def _holdout_scores(model, holdout) -> dict:
    """``holdout_*`` scores of ``model`` where the run sets a holdout aside (``--holdout-size``,
    else ``holdout`` is None): reported only; nothing the run chooses looks at them."""
    return _scores(evaluate(model, holdout), "holdout") if holdout is not None else {}


def run_quantize(run: RunDir, cfg: QuantizeConfig, data_dir=None) -> dict:
    """Merge, snap to zero, assign, drop dead units; evaluate and record every stage's figures."""
    cfg.validate()
    run.require("retrained", "run 'sws retrain' first")
    tensors, meta = run.load("retrained")
    model = model_from_checkpoint(tensors, meta, str(run.path / "retrained.safetensors"))
    prior = prior_from_checkpoint(tensors, meta)
    covered = covered_of(model, meta["retrain"]["prior"])
    decision = dict(meta.get("metrics", {}).get("budget") or {})
    splits = None                  # every split, loaded once (a user's data function is called once)
    if cfg.finetune_epochs or decision.get("limit_val_error") is not None or meta["data"].get("holdout_size"):
        splits = load_splits(meta["data"], data_dir)
    train, val = (splits["train"], splits["val"]) if splits else (None, None)
    test, split = scoring_set(meta["data"], data_dir, splits)
    run.invalidate_after("retrained")
    snapped = bool(meta.get("metrics", {}).get("snapped"))
    with Snap(prior, list(covered.values()), cfg.merge_threshold).applied() if snapped else \
            contextlib.nullcontext():   # a network trained through the snap is scored as it was trained
        retrained_eval = evaluate(model, test)
    q = postprocess_(model, prior, covered, cfg.merge_threshold, dead_units=cfg.drop_dead_units, finetune=train,
                     finetune_epochs=cfg.finetune_epochs, finetune_lr=cfg.finetune_lr, probe=test,
                     batch_size=meta["retrain"]["batch_size"], seed=meta["retrain"]["seed"], val=val)
    quantized_eval = evaluate(model, test)
    holdout = _holdout_scores(model, splits and splits["holdout"])   # after every choice: reported only
    if val is not None and decision.get("limit_val_error") is not None:
        decision = Budget.final(decision, evaluate(model, val).get("error"), cfg.finetune_epochs)
    stats = layer_stats(covered)
    metrics = {**_scores(quantized_eval, split), **_scores(retrained_eval, split, "retrained_"), **holdout,
               "split": split,
               "retrained_snapped": snapped,
               "codebook": q.codebook.tolist(), "merge_threshold": cfg.merge_threshold,
               "components_before_merge": prior.n_components,
               "components_after_merge": int(q.codebook.numel()),
               "nonzero_share": stats["total"]["nonzero_share"],
               "distinct_values": stats["total"]["distinct"], "layers": stats["layers"],
               "covered": list(covered), "cover": meta["retrain"]["prior"]["cover"],
               "dead_unit_weights_dropped": q.dropped, "budget": decision}
    if run.has("pretrained"):
        ptensors, pmeta = run.load("pretrained")
        pmodel = model_from_checkpoint(ptensors, pmeta)
        pstats = layer_stats(covered_of(pmodel, meta["retrain"]["prior"]))
        pre = run.read_json("metrics.json", {}).get("pretrained", {})
        recorded = {k[len(split) + 1:]: v for k, v in pre.items() if k.startswith(split + "_")}
        metrics.update(_scores(recorded or evaluate(pmodel, test), split, "pretrained_"))
        metrics["pretrained_nonzero_share"] = pstats["total"]["nonzero_share"]
        metrics["pretrained_distinct_values"] = pstats["total"]["distinct"]
    run.save_stage("quantized", model.state_dict(),
                   {**{k: meta[k] for k in ("model", "input_norm", "data")}, "quantize": dataclasses.asdict(cfg),
                    "codebook": q.codebook.tolist(), "covered": list(covered),
                    "merged_mixture": {"means": q.merged.mu.tolist(), "log_precisions": q.merged.gamma.tolist(),
                                       "log_pis": q.merged.log_pi.tolist()},
                    "metrics": {k: metrics[k] for k in (f"{split}_loss", "nonzero_share", "distinct_values")}})
    run.update_json("metrics.json", "quantized", metrics)
    return metrics


def compress_run(run_dir, out) -> int:
    """Write the post-processed network of a run folder as a ``.sws`` file; return its size.

    Refused when the quantized checkpoint was made from an earlier retraining."""
    run = RunDir.open(run_dir)
    run.require("quantized", "run 'sws quantize' first")
    run.require_current("quantized")
    tensors, meta = run.load("quantized")
    model = model_from_checkpoint(tensors, meta, str(run.path / "quantized.safetensors"))
    size = save(out, model, codebook=meta["codebook"], quantized=meta["covered"], **header_of(meta))
    if Path(out).resolve().parent == run.path.resolve():
        run.update_json("metrics.json", "file", {"path": Path(out).name, "bytes": size,
                                                 "quantized_sha256": run.digest("quantized")})
    return size


def evaluate_path(path: str | Path, data_dir=None) -> dict:
    """Scores of every stage in a run folder, or of one checkpoint file."""
    path = Path(path)
    if path.is_dir():
        run = RunDir.open(path)
        targets = [(s, run.path / s) for s in ("pretrained", "retrained", "quantized") if run.has(s)]
        if not targets:
            raise CheckpointError(f"{path}: run folder holds no checkpoint")
    elif path.suffix in (".safetensors", ".json"):
        targets = [(path.stem, path.with_suffix(""))]
    else:
        raise CheckpointError(f"{path}: not a run folder or a .safetensors checkpoint")
    results, test = {}, None
    for stage, ckpt in targets:
        tensors, meta = load_checkpoint(ckpt)
        model = model_from_checkpoint(tensors, meta, str(ckpt) + ".safetensors")
        if test is None:                 # the stages share their data settings: loaded once
            data = meta.get("data") or {}
            splits = load_splits(data, data_dir) if data.get("holdout_size") else None
            test, holdout = scoring_set(data, data_dir, splits)[0], splits and splits["holdout"]
        stats = layer_stats(select_parameters(model))
        results[stage] = {**evaluate(model, test), **_holdout_scores(model, holdout),
                          "nonzero_share": stats["total"]["nonzero_share"],
                          "distinct_values": stats["total"]["distinct"]}
    if path.is_dir():
        RunDir(path).update_json("metrics.json", "evaluate", results)
    return results


def evaluate_file(path, data_dir=None, data: str | None = None, model_ref: str | None = None) -> dict:
    """Scores of the network in a ``.sws`` file, keyed by the file's stem.

    A reference net's file needs nothing else (MNIST test set); a user's module needs its
    model function (recorded in the file by ``sws compress``, or ``model_ref``) and ``data``."""
    from sws.format.container import read
    header = read(path).header["model"]
    ref = model_ref or header.get("factory")
    if header["name"].startswith("user:"):
        if not ref:
            raise ConfigError(f"{path}: holds a user-defined model; pass --model PKG.MODULE:FUNCTION")
        if not data:
            raise ConfigError(f"{path}: holds a user-defined model; pass --data PKG.MODULE:FUNCTION")
        model = load(path, model=resolve_model(ref))
    else:
        model = load(path)
    test = load_test({"ref": data} if data else None, data_dir)
    stats = layer_stats(select_parameters(model))
    return {Path(path).stem: {**evaluate(model, test), "nonzero_share": stats["total"]["nonzero_share"],
                              "distinct_values": stats["total"]["distinct"]}}

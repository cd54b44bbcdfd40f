"""The pipeline's stages on a run folder: pretrain, retrain, quantize, evaluate.

Each stage reads its input checkpoint from the run folder, does its work with
the pure functions of ``train``/``prior``/``quantize``, and writes its
checkpoint, its history records and its metrics back.  The CLI is a thin layer
over these functions.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from sws.config import PretrainConfig, QuantizeConfig, RetrainConfig, from_dict
from sws.zoo.mnist import load_mnist, load_mnist_test
from sws.errors import CheckpointError, DataError, DivergenceError, SwsError, TrainingInterrupted
from sws.zoo.models import build_model, covered_parameters
from sws.prior import GaussianMixturePrior
from sws.method.deadunits import drop_dead_units
from sws.method.postprocess import layer_stats, quantize_weights
from sws.prior.merge import Mixture
from sws.method.files import load, save
from sws.runs.rundir import RunDir
from sws.storage import load_strict
from sws.method.loop import evaluate, pretrain, retrain

__all__ = ["run_pretrain", "run_retrain", "run_quantize", "evaluate_path", "model_from_checkpoint",
           "load_data", "load_test"]

PRIOR_PREFIX = "prior."


def load_data(data: dict, data_dir=None):
    """(train, val, test) for the data settings recorded in a checkpoint."""
    return load_mnist(data_dir, train_subset=data.get("train_subset") or None,
                      val_size=data.get("val_size", 0), seed=data.get("seed", 0))


def load_test(data_dir=None):
    """The test split alone, checked like ``load_data``'s."""
    test = load_mnist_test(data_dir)
    _check_data(None, test)
    return test


def model_from_checkpoint(tensors: dict, meta: dict, where: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the named model and load its tensors; a mismatch raises CheckpointError."""
    model = build_model(meta["model"], meta.get("input_norm", "none"))
    state = {k: v for k, v in tensors.items() if not k.startswith(PRIOR_PREFIX)}
    load_strict(model, state, where, f"tensors do not match model {meta['model']!r}")
    return model


def _history_writer(run: RunDir, stage: str, records: list[dict] | None = None):
    records = list(records or [])

    def on_epoch(rec):
        records.append(rec)
        run.set_history(stage, records)
    return on_epoch


def _resumable(run: RunDir, stage: str, resume: bool):
    """(resume state or None, on_state callback, error wrapper) for a stage's loop."""
    state = run.load_state(stage) if resume else None
    path = run.state_path(stage).with_suffix(".safetensors")

    def on_state(tensors, meta):
        run.save_state(stage, tensors, meta)

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


def _check_data(train, test):
    for name, d in (("training", train), ("test", test)):
        if d is not None and tuple(d.x.shape[1:]) != (1, 28, 28):
            raise DataError(f"{name} images have shape {tuple(d.x.shape[2:])}, the models take 28x28")


def run_pretrain(run: RunDir, cfg: PretrainConfig | None, data_dir=None, quiet=False,
                 resume: bool = False, guard: bool = True) -> dict:
    """Pretrain into ``run``; with ``resume``, continue from ``RUN/state-pretrain`` with its settings."""
    state, on_state, wrap = _resumable(run, "pretrain", resume)
    cfg = _stage_config(PretrainConfig, state, cfg, "pretrain", run.state_path("pretrain"))
    data = {"train_subset": cfg.train_subset, "val_size": cfg.val_size, "seed": cfg.seed}
    train, val, test = load_data(data, data_dir)
    _check_data(train, test)
    model = build_model(cfg.model, cfg.input_norm, seed=cfg.seed, init=cfg.weight_init)
    t0 = time.perf_counter()
    writer = _history_writer(run, "pretrain", state[1].get("history") if state else None)
    try:
        history = pretrain(model, train, cfg, val, test, quiet, writer, resume=state,
                           on_state=on_state, guard=guard)
    except (TrainingInterrupted, DivergenceError, CheckpointError) as e:
        raise wrap(e) from None
    metrics = {"seconds": time.perf_counter() - t0, "parameters": sum(p.numel() for p in model.parameters()),
               **{k: v for k, v in history[-1].items() if k.startswith(("test_", "val_"))}}
    meta = {"model": cfg.model, "input_norm": cfg.input_norm, "data": data,
            "pretrain": dataclasses.asdict(cfg), "metrics": metrics}
    run.save("pretrained", model.state_dict(), meta)
    run.update_json("metrics.json", "pretrained", metrics)
    run.remove_state("pretrain")
    return metrics


def _snapshot_writer(run: RunDir, model, prior, covered: dict, history_cb, initial: bool = True):
    """Per-epoch snapshots of the covered weights and the prior, for figures."""
    folder = run.path / "snapshots"
    folder.mkdir(exist_ok=True)

    def save(epoch):
        tensors = {k: v.detach() for k, v in covered.items()}
        tensors.update({PRIOR_PREFIX + k: v for k, v in prior.state_dict().items()})
        from sws.runs.checkpoint import save_checkpoint
        save_checkpoint(folder / f"epoch_{epoch:03d}", tensors, {"model": "snapshot", "epoch": epoch})

    def on_epoch(rec):
        save(rec["epoch"])
        history_cb(rec)
    if initial:
        save(0)
    return on_epoch


def run_retrain(run: RunDir, cfg: RetrainConfig | None, data_dir=None, quiet=False,
                snapshots: bool = False, resume: bool = False, guard: bool = True) -> dict:
    """Retrain the run's pretrained net with the prior.

    With ``snapshots``, the covered weights and the prior are saved after every
    epoch (and before the first) as ``RUN/snapshots/epoch_NNN.safetensors``;
    figures are drawn from those files, outside the training loop.  With
    ``resume``, retraining continues from ``RUN/state-retrain`` with the
    settings recorded there, bit for bit as if it had not stopped.
    """
    state, on_state, wrap = _resumable(run, "retrain", resume)
    cfg = _stage_config(RetrainConfig, state, cfg, "retrain", run.state_path("retrain"))
    run.require("pretrained", "run 'sws pretrain' first")
    tensors, meta = run.load("pretrained")
    model = model_from_checkpoint(tensors, meta, str(run.path / "pretrained.safetensors"))
    train, val, test = load_data(meta["data"], data_dir)
    _check_data(train, test)
    covered = covered_parameters(model, cfg.prior.cover)
    prior = GaussianMixturePrior(cfg.prior, list(covered.values()))
    t0 = time.perf_counter()
    on_epoch = _history_writer(run, "retrain", state[1].get("history") if state else None)
    if snapshots:
        on_epoch = _snapshot_writer(run, model, prior, covered, on_epoch, initial=state is None)
    try:
        history = retrain(model, prior, train, cfg, val, test, quiet, on_epoch, resume=state,
                          on_state=on_state, guard=guard)
    except (TrainingInterrupted, DivergenceError, CheckpointError) as e:
        raise wrap(e) from None
    metrics = {"seconds": time.perf_counter() - t0,
               **{k: v for k, v in history[-1].items() if k.startswith(("test_", "val_"))},
               **{"nonzero_share_within_2sd": history[-1]["share_within_2sd_of_zero"]}}
    out = dict(model.state_dict())
    out.update({PRIOR_PREFIX + k: v for k, v in prior.state_dict().items()})
    run.save("retrained", out, {**{k: meta[k] for k in ("model", "input_norm", "data")},
                                "retrain": dataclasses.asdict(cfg), "metrics": metrics})
    run.update_json("metrics.json", "retrained", metrics)
    run.remove_state("retrain")
    return metrics


def _prior_from_checkpoint(tensors: dict, meta: dict) -> GaussianMixturePrior:
    from sws.config import PriorConfig
    pcfg = from_dict(PriorConfig, meta["retrain"]["prior"])
    prior = GaussianMixturePrior(dataclasses.replace(pcfg, init="linspace"))
    state = {k[len(PRIOR_PREFIX):]: v for k, v in tensors.items() if k.startswith(PRIOR_PREFIX)}
    if "pi0" in state:  # checkpoints written before pi0 could be learned stored pi0 itself
        pi0 = state.pop("pi0").double()
        state["pi0_logit"] = torch.log(pi0 / (1 - pi0)).float()
    try:
        prior.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"prior tensors do not match the recorded prior settings ({e})") from None
    return prior


def run_quantize(run: RunDir, cfg: QuantizeConfig, data_dir=None) -> dict:
    """Merge, snap to zero, assign; evaluate and record every stage's figures."""
    cfg.validate()
    run.require("retrained", "run 'sws retrain' first")
    tensors, meta = run.load("retrained")
    model = model_from_checkpoint(tensors, meta, str(run.path / "retrained.safetensors"))
    prior = _prior_from_checkpoint(tensors, meta)
    cover = meta["retrain"]["prior"]["cover"]
    covered = covered_parameters(model, cover)
    quantized, _, codebook, merged = quantize_weights(
        {k: v.detach() for k, v in covered.items()}, Mixture.from_prior(prior), cfg.merge_threshold)
    test = load_test(data_dir)
    retrained_eval = evaluate(model, test)
    with torch.no_grad():
        for name, value in quantized.items():
            model.get_parameter(name).copy_(value)
    dropped = drop_dead_units(model) if cfg.drop_dead_units else 0
    quantized = {name: model.get_parameter(name).detach() for name in quantized}
    quantized_eval = evaluate(model, test)
    stats = layer_stats(quantized)
    metrics = {"test_accuracy": quantized_eval["accuracy"], "test_error": quantized_eval["error"],
               "retrained_test_accuracy": retrained_eval["accuracy"],
               "codebook": codebook.tolist(), "merge_threshold": cfg.merge_threshold,
               "components_before_merge": prior.n_components,
               "components_after_merge": int(codebook.numel()),
               "nonzero_share": stats["total"]["nonzero_share"],
               "distinct_values": stats["total"]["distinct"], "layers": stats["layers"],
               "covered": list(covered), "cover": cover, "dead_unit_weights_dropped": dropped}
    pre = run.read_json("metrics.json", {}).get("pretrained", {})
    if run.has("pretrained"):
        ptensors, pmeta = run.load("pretrained")
        pmodel = model_from_checkpoint(ptensors, pmeta)
        pstats = layer_stats({k: v for k, v in covered_parameters(pmodel, cover).items()})
        metrics["pretrained_test_accuracy"] = pre.get("test_accuracy", evaluate(pmodel, test)["accuracy"])
        metrics["pretrained_nonzero_share"] = pstats["total"]["nonzero_share"]
        metrics["pretrained_distinct_values"] = pstats["total"]["distinct"]
    run.save("quantized", model.state_dict(),
             {**{k: meta[k] for k in ("model", "input_norm", "data")}, "quantize": dataclasses.asdict(cfg),
              "codebook": codebook.tolist(), "covered": list(covered),
              "merged_mixture": {"means": merged.mu.tolist(), "log_precisions": merged.gamma.tolist(),
                                 "log_pis": merged.log_pi.tolist()},
              "metrics": {k: metrics[k] for k in ("test_accuracy", "nonzero_share", "distinct_values")}})
    run.update_json("metrics.json", "quantized", metrics)
    return metrics


def evaluate_path(path: str | Path, data_dir=None) -> dict:
    """Test accuracy of every stage in a run folder, or of one checkpoint file."""
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
    from sws.runs.checkpoint import load_checkpoint
    for stage, ckpt in targets:
        tensors, meta = load_checkpoint(ckpt)
        model = model_from_checkpoint(tensors, meta, str(ckpt) + ".safetensors")
        if test is None:
            test = load_test(data_dir)
        covered = covered_parameters(model, "all")
        stats = layer_stats(covered)
        results[stage] = {**evaluate(model, test), "nonzero_share": stats["total"]["nonzero_share"],
                          "distinct_values": stats["total"]["distinct"]}
    if path.is_dir():
        RunDir(path).update_json("metrics.json", "evaluate", results)
    return results
def compress_run(run_dir, out) -> int:
    """Write the post-processed network of a run folder as a ``.sws`` file; return its size."""
    from sws.runs.rundir import RunDir
    run = RunDir.open(run_dir)
    run.require("quantized", "run 'sws quantize' first")
    tensors, meta = run.load("quantized")
    return save(out, tensors, name=meta["model"], input_norm=meta.get("input_norm", "none"),
                codebook=meta["codebook"], quantized=meta["covered"])


def evaluate_file(path, data_dir=None) -> dict:
    """Test accuracy of the network in a ``.sws`` file, keyed by the file's stem."""
    from sws.zoo.models import covered_parameters
    from sws.runs.stages import load_test
    from sws.method.postprocess import layer_stats
    from sws.method.loop import evaluate
    model = load(path)
    test = load_test(data_dir)
    stats = layer_stats(covered_parameters(model, "all"))
    return {Path(path).stem: {**evaluate(model, test), "nonzero_share": stats["total"]["nonzero_share"],
                              "distinct_values": stats["total"]["distinct"]}}

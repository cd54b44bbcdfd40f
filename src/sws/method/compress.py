"""Compress any ``nn.Module``: ``sws.compress(model, train, val, ...)``.

The whole method on a user's own network and data, composed of the same pieces
every entry point uses: the prior attached to the model
(``sws.method.surface.SoftWeightSharing``), the one training loop
(``sws.method.loop.fit``: guard, schedules, signals, resume), post-processing
in place (``sws.method.postprocess``) and the one writer (``sws.method.files``).
``sws.load(path, model=module)`` reads the file back into a module of the same
architecture.  Runs in one process, or in several under ``torchrun``
(``sws.method.distributed``).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

from sws.config import QuantizeConfig, RetrainConfig, passes_per_epoch
from sws.errors import ConfigError, DataError
from sws.method import distributed
from sws.method.batches import as_source
from sws.method.evaluate import evaluate
from sws.method.files import check_storable, check_target
from sws.method.loop import retrain
from sws.method.surface import Pattern, SoftWeightSharing, resolve_config
from sws.method.watch import Budget, kept_record

__all__ = ["CompressionReport", "BudgetWarning", "compress"]


class BudgetWarning(UserWarning):
    """No retrained state's post-processed network met the accuracy budget."""


@dataclass
class CompressionReport:
    """What ``compress`` did: settings, per-epoch history, results; ``to_dict()`` for JSON."""

    config: dict
    covered: list[str]
    history: list[dict]
    codebook: list[float]
    layers: dict
    nonzero_share: float
    distinct_values: int
    seconds: float
    world_size: int = 1
    metrics: dict = field(default_factory=dict)   # val_* before / after retraining, after quantising
    file: dict | None = None                      # path, bytes, cr_file, cr_paper when written
    budget: dict = field(default_factory=dict)    # the accuracy budget's decision (sws.method.watch)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compress(model: nn.Module, train, val=None, config: RetrainConfig | str = "tutorial", *,
             include: Iterable[Pattern] | None = None, exclude: Iterable[Pattern] | None = None,
             skip_norm: bool = True, merge_threshold: float = 1e-2, loss_fn: Callable | None = None,
             output: Callable | None = None, n_train: int | None = None, out=None,
             recalibrate_bn: bool = True, drop_dead_units: bool = True, finetune_epochs: int | None = None,
             finetune_lr: float = QuantizeConfig.finetune_lr, device=None,
             quiet: bool = True, on_epoch: Callable[[dict], object] | None = None, guard: bool = True,
             resume: tuple[dict, dict] | None = None, on_state: Callable[[dict, dict], None] | None = None,
             holdout=None, overwrite: bool = False, write_over_budget: bool = False,
             **overrides) -> tuple[nn.Module, CompressionReport]:
    """Retrain ``model`` with the mixture prior, post-process it, optionally write ``out``.

    Args:
      model: any module; its pretrained weights are the starting point.  Changed
        in place and returned in eval mode.
      train, val: Datasets of (input, target) pairs, or DataLoaders (their dataset, batch
        size, ``drop_last``, collate function and a ``SubsetRandomSampler``'s items are used;
        the loop draws the seeded order itself and, under ``torchrun``, gives each process its
        shard; another sampler raises ``ConfigError``).
      config: a ``RetrainConfig`` or a preset name ("tutorial", "paper", "resnet");
        ``overrides`` (e.g. ``epochs=3, tau=0.005, lr_schedule="cosine", batch_size=64``)
        apply to a preset.
      include, exclude, skip_norm: which parameters the prior covers
        (``select_parameters``; ``config.prior.cover`` says whether biases are in).
      merge_threshold: KL threshold for merging components (SPEC section 4).
      loss_fn: ``loss_fn(scores, target)``, mean over the batch (default cross-entropy);
        ``output`` picks the scores from the model's output (default: the tensor, the first
        item of a tuple, or ``.logits``).
      n_train: N in tau / N (default: the training set's size).
      out: path of the ``.sws`` file to write (rank 0 only; its folder is made if missing);
        checked before any training: an existing file is replaced only with ``overwrite=True``.
      recalibrate_bn: after quantising, re-estimate batch-norm statistics on ``train``.
      drop_dead_units: after quantising, zero the weights that cannot change the output.
      finetune_epochs, finetune_lr: then train the codebook values on ``train``, assignments fixed
        (``sws.method.finetune``); default: ``QuantizeConfig``'s with the budget on, 0 without.
      device: where to train (default: where the model is).
      guard, resume, on_state, on_epoch: as in ``sws.method.loop.fit``.
      holdout: a Dataset (or DataLoader) no choice looks at, scored before and after:
        ``report.metrics["before_holdout_*"]`` and ``["quantized_holdout_*"]``.  ``val`` chooses
        the state kept and the codebook's values, so its scores are optimistic for them; this
        one is not.

    The accuracy budget (``config.budget``, ``max_error_increase`` points over the pretrained
    network's validation error, ``patience``; needs ``val``): every epoch the post-processed
    network is evaluated on ``val`` and the state kept is the one with the highest compression
    rate within budget; when none is, the lowest-error state is kept, ``report.budget["status"]``
    is "over", a ``BudgetWarning`` says so and ``out`` is not written (a network the budget
    rejects is not a file to hand on) unless ``write_over_budget=True``.  Then
    (``snap_epochs``, 5; with the budget on) the kept state trains through the snap
    (``sws.method.snap``); without ``val`` the phase runs from the last state and its last
    state is kept.
    Returns:
      (the post-processed model, a ``CompressionReport``).
    """
    if next(model.parameters(), None) is None:
        raise ConfigError(f"the model ({type(model).__name__}) has no parameters: nothing to compress")
    if out is not None and distributed.is_main():
        check_target(out, overwrite)                 # before any training, not at the end
    train, val = as_source(train), as_source(val, "validation data")
    holdout = as_source(holdout, "holdout data")
    if train.batch_size and "batch_size" not in overrides and isinstance(config, str):
        overrides["batch_size"] = train.batch_size          # a DataLoader's batch size is kept
    cfg = resolve_config(config, overrides)
    passes = 1
    if isinstance(config, str) and "epochs" not in overrides:   # a small training set: as many steps
        passes = passes_per_epoch(cfg.epochs, train.steps(cfg.batch_size, distributed.world_size()))
    if not merge_threshold >= 0:
        raise ConfigError(f"merge_threshold must be >= 0, got {merge_threshold}")
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    distributed.broadcast_parameters(model)          # every replica starts from rank 0's weights
    check_storable(model)                            # before any training, not at the end
    sws_ = SoftWeightSharing(model, cfg, n_train=n_train or len(train), include=include, exclude=exclude,
                             skip_norm=skip_norm, merge_threshold=merge_threshold, dead_units=drop_dead_units)
    t0 = time.perf_counter()
    metrics = {}
    kw = {"loss_fn": loss_fn, "output": output, "device": device}
    if val is not None:
        metrics.update({f"before_{k}": v for k, v in evaluate(model, val, **kw).items()})
        if not math.isfinite(metrics["before_loss"]):
            raise DataError(f"the validation loss of the network as handed in is {metrics['before_loss']}: the "
                            "validation inputs or targets hold non-finite values; check them with torch.isfinite")
    if holdout is not None:
        metrics.update({f"before_holdout_{k}": v for k, v in evaluate(model, holdout, **kw).items()})
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    budget = Budget(model, sws_.prior, sws_.covered, val, threshold=merge_threshold, dead_units=drop_dead_units,
                    max_error_increase=cfg.max_error_increase if cfg.budget else None,
                    patience=cfg.patience if cfg.budget else 0,
                    recalibrate=train if recalibrate_bn and has_bn else None, eval_kw=kw,
                    tau_control=cfg.tau_control)
    history = retrain(model, sws_.prior, dataclasses.replace(train, passes=passes), cfg, val, None, quiet, on_epoch,
                      covered=sws_.weights, watch=budget, n_train=sws_.n_train, guard=guard, resume=resume,
                      on_state=on_state, **kw)
    decision = budget.decide()
    if finetune_epochs is None:
        finetune_epochs = QuantizeConfig.finetune_epochs if budget.active else 0
    kept = kept_record(history, decision)
    q = sws_.quantize_(recalibrate=train if recalibrate_bn else None, finetune=train if finetune_epochs else None,
                       finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, loss_fn=loss_fn, output=output,
                       val=val)
    if val is not None:
        metrics.update({f"retrained_{k[4:]}": v for k, v in kept.items() if k.startswith("val_")})
        metrics.update({f"quantized_{k}": v for k, v in evaluate(model, val, **kw).items()})
        decision = Budget.final(decision, metrics.get("quantized_error"), finetune_epochs)
    if holdout is not None:      # after every choice: reported only
        metrics.update({f"quantized_holdout_{k}": v for k, v in evaluate(model, holdout, **kw).items()})
    withheld = out is not None and decision.get("status") == "over" and not write_over_budget
    if decision.get("status") == "over" and distributed.is_main():
        warnings.warn(decision["message"] + (f"; {out} not written (write_over_budget=True writes it)"
                                             if withheld else ""), BudgetWarning, stacklevel=2)
    stats = sws_.stats()
    report = CompressionReport(
        config=dataclasses.asdict(cfg) | {"merge_threshold": merge_threshold, "n_train": sws_.n_train,
                                          "passes_per_epoch": passes, "recalibrate_bn": recalibrate_bn,
                                          "drop_dead_units": drop_dead_units,
                                          "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr,
                                          "dead_unit_weights_dropped": q.dropped},
        covered=list(sws_.covered), history=history, codebook=q.codebook.tolist(), layers=stats["layers"],
        nonzero_share=stats["total"]["nonzero_share"], distinct_values=stats["total"]["distinct"],
        seconds=time.perf_counter() - t0, world_size=distributed.world_size(), metrics=metrics,
        budget=decision)
    if out is not None and distributed.is_main() and not withheld:
        from sws.format.stats import file_stats
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        size = sws_.save(out)
        total = file_stats(Path(out).read_bytes())["total"]
        report.file = {"path": str(out), "bytes": size, "cr_file": total["cr_file"],
                       "cr_paper": total["cr_paper"]}
    distributed.barrier()
    return model.eval(), report

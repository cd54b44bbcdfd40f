"""What the Trainer and Lightning callbacks share: the prior, its own optimiser, the end.

A framework's optimiser and learning-rate scheduler are built before any callback
runs, and torch's schedulers refuse parameter groups added later (their
``zip(..., strict=True)``).  So the mixture gets an Adam of its own with the
preset's three rates (means, log-precisions, mixing logits), stepped in the
same hook that adds the prior's gradient: after the framework's backward pass,
before its optimiser step.  Both gradients are computed at the same point, so
stepping the mixture first and the network second is the joint step of
``sws.compress``'s single Adam.  The network's weights keep the framework's
optimiser and schedule; the config's ``lr_weights`` is not used.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from sws.config import lr_factor
from sws.errors import ConfigError
from sws.method.evaluate import evaluate
from sws.method.files import check_storable, check_target
from sws.method.surface import SoftWeightSharing

__all__ = ["Driver", "pair_batches", "has_batchnorm"]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               for m in model.modules())


class _Pairs(Dataset):
    """A dataset of mappings (Hugging Face style) as (inputs, 0) pairs for recalibration."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i], 0


LABEL_KEYS = ("labels", "label", "label_ids")


def pair_batches(data, batch_size: int | None = None):
    """(input, target) batches over a DataLoader's (or a Dataset's) items, or None.

    Pairs are used as they are; mappings (``{"pixel_values": ..., "labels": ...}``) feed the
    model ``model(**inputs)`` with the label keys removed and their value as the target (0
    where there is none).  Batch-norm recalibration reads the inputs, the guard both."""
    dataset = getattr(data, "dataset", data)
    if dataset is None or not hasattr(dataset, "__getitem__"):
        return None
    try:
        first = dataset[0]
        len(dataset)
    except Exception:      # an iterable dataset: nothing to index
        return None
    collate = getattr(data, "collate_fn", None) or default_collate
    bs = batch_size or getattr(data, "batch_size", None) or 32
    if isinstance(first, (tuple, list)) and len(first) == 2:
        return DataLoader(dataset, batch_size=bs, collate_fn=collate)
    if isinstance(first, dict):
        def pairs(items):
            batch = collate([x for x, _ in items])
            batch = dict(batch.items()) if hasattr(batch, "items") else batch
            target = None
            for key in LABEL_KEYS:
                value = batch.pop(key, None)
                target = value if target is None else target
            return batch, (target if target is not None else torch.zeros(len(items)))
        return DataLoader(_Pairs(dataset), batch_size=bs, collate_fn=pairs)
    return None


class Driver:
    """The prior attached to a framework's model: gradient, mixture step, logging, the end."""

    def __init__(self, config="tutorial", out=None, *, n_train: int | None = None, include=None, exclude=None,
                 merge_threshold: float | None = None, dead_units: bool | None = None, recalibrate=True,
                 val=True, overwrite: bool = False, **overrides):
        self.config_arg, self.overrides = config, overrides
        self.overwrite = overwrite
        self.val = None if val is False else val   # the guard's data: True the framework's loader, None off
        self.out = Path(out) if out is not None else None
        self.n_train = n_train
        self.kwargs = {"include": include, "exclude": exclude}
        if merge_threshold is not None:
            self.kwargs["merge_threshold"] = merge_threshold
        if dead_units is not None:
            self.kwargs["dead_units"] = dead_units
        self.recalibrate = recalibrate
        self.sws: SoftWeightSharing | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.result: dict | None = None
        self._pending = None          # a state loaded before the model was there
        self._cx_sum, self._cx_n, self._last_cx = 0.0, 0, float("nan")
        self.seconds = 0.0            # spent in step(): the prior's gradient and the mixture's update
        # fail early on a bad preset or override, not at the start of training
        from sws.method.surface import resolve_config
        self.config = resolve_config(config, dict(overrides))
        if self.config.distill:
            raise ConfigError("distill is for sws's own training loop (sws.compress, sws retrain); under a "
                              "framework the loss is the framework's: distil in your loss, or leave distill at 0")
        if self.config.augment:
            raise ConfigError("augment is for sws's own training loop (sws.compress, sws retrain); under a "
                              "framework the batches are the framework's: augment in your data pipeline, "
                              "or leave augment empty")

    # ---- set-up ------------------------------------------------------------------------------
    def attach(self, model: nn.Module, n_train: int | None):
        n = self.n_train or n_train
        if not n:
            raise ConfigError("cannot tell the training set's size (an iterable dataset?): pass n_train=N")
        if self.out is not None:                 # the file is written at the end: fail now, not then
            check_storable(model)
            check_target(self.out, self.overwrite)
        self.sws = SoftWeightSharing(model, self.config, n_train=int(n), **self.kwargs)
        self.optimizer = torch.optim.Adam(self.sws.param_groups())
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        if self._pending is not None:
            self.load_state_dict(self._pending)
            self._pending = None
        return self.sws

    @property
    def attached(self) -> bool:
        return self.sws is not None

    # ---- every optimiser step ----------------------------------------------------------------
    def step(self, epoch: float | None, done: int, total: int | None):
        """Add (tau / N) dC/dp to the gradients and step the mixture (its rates per the config's
        schedule at step ``done`` of ``total``)."""
        t0 = time.perf_counter()
        factor = lr_factor(self.config.lr_schedule, done, total) if total else 1.0
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * factor
        c = self.sws.backward(epoch=epoch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        c = float(c)
        self._last_cx = c
        self._cx_sum += c
        self._cx_n += 1
        self._epoch = epoch
        self.seconds += time.perf_counter() - t0
        return c

    def values(self, reset: bool = True) -> dict:
        """Scalars to log: mean C since the last call, tau, the mixture's state."""
        out = {"sws/complexity": self._cx_sum / self._cx_n if self._cx_n else self._last_cx,
               "sws/tau": self.sws.tau(getattr(self, "_epoch", None)), **self.sws.log_values()}
        if reset:
            self._cx_sum, self._cx_n = 0.0, 0
        return out

    # ---- the end -----------------------------------------------------------------------------
    def finish(self, recalibration_loader=None, write: bool = True, val_loader=None) -> dict:
        """Quantise the model in place, write the ``.sws`` file (``write``: this process), return
        the numbers (non-zero share, distinct values, file size).

        The guard: with validation data (``val`` given to the callback, else the framework's
        ``val_loader``) whose outputs are class scores, the post-processed network must score
        within ``max_error_increase`` points of the network as trained.  If it does not, the
        model gets its trained weights back, no file is written, a warning says so and the
        result carries ``sws/status`` "over"."""
        data = None
        if self.recalibrate is True:
            if has_batchnorm(self.sws.model) and recalibration_loader is not None:
                data = pair_batches(recalibration_loader)
        elif self.recalibrate not in (False, None):
            data = self.recalibrate
        model = self.sws.model
        val = self._guard_data(val_loader)
        before, why = None, "no validation data with class labels"
        if val is not None:
            try:
                before = evaluate(model, val).get("error")
            except Exception as e:  # noqa: BLE001 - the user's model meets the framework's batches
                why = (f"the model cannot score the validation batches ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})")
        if before is not None:
            trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        q = self.sws.quantize_(recalibrate=data)
        total = self.sws.stats()["total"]
        res = {"sws/nonzero_share": total["nonzero_share"], "sws/distinct_values": total["distinct"],
               "sws/codebook_size": int(q.codebook.numel()), "sws/dropped_dead": int(q.dropped),
               "sws/recalibrated": data is not None, "sws/steps": self.sws.steps_done,
               "sws/prior_seconds": self.seconds}
        if before is None:
            res["sws/status"] = "unchecked"
            if self.val is not None:   # off when asked: no warning
                warnings.warn(f"sws: the post-processed network was not validated ({why}): pass val=DATASET "
                              "of (input, target) pairs the model takes to the callback to guard the file",
                              stacklevel=2)
        else:
            after = evaluate(model, val)["error"]
            points = self.config.max_error_increase
            res.update({"sws/val_error_trained": before, "sws/val_error": after, "sws/budget_points": points})
            if after > before + points / 100.0 + 1e-12:
                with torch.no_grad():
                    model.load_state_dict(trained)
                self.sws.quantized = None
                msg = (f"sws: post-processing raised the validation error from {100 * before:.2f} % to "
                       f"{100 * after:.2f} %, over the budget of {points:g} points: no file written, the model "
                       "keeps its trained weights; train longer (the mixture had not settled) or with a smaller "
                       "tau, or raise max_error_increase")
                res.update({"sws/status": "over", "sws/message": msg})
                warnings.warn(msg, stacklevel=2)
                self.result = res
                return res
            res["sws/status"] = "within"
        if self.out is not None and write:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            from sws.format.stats import file_stats
            size = self.sws.save(self.out)
            res.update({"sws/file_bytes": size, "sws/path": str(self.out),
                        "sws/cr_file": file_stats(self.out.read_bytes())["total"]["cr_file"]})
        self.result = res
        return res

    def _guard_data(self, val_loader):
        """The guard's (input, target) batches: the callback's ``val``, else the framework's."""
        if self.val is None:
            return None
        given = self.val
        if given is True:
            given = val_loader
            if isinstance(given, (list, tuple)):      # the framework's several loaders: the first
                given = given[0] if given else None
        return pair_batches(given) if given is not None else None

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if not self.attached:
            return {}
        return {"prior": {k: v.detach().cpu() for k, v in self.sws.prior.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "steps_done": self.sws.steps_done}

    def load_state_dict(self, state: dict):
        if not state:
            return
        if not self.attached:
            self._pending = state
            return
        self.sws.prior.load_state_dict(state["prior"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sws.steps_done = state.get("steps_done", 0)

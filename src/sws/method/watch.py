"""Watching what the user keeps: the post-processed network, during retraining, and the
accuracy budget that chooses the state to keep.

At the end of every epoch ``Budget`` post-processes a copy of the network
(merge, snap, assign, dead units; SPEC section 4), evaluates it on a validation
set that training never sees, and counts the bytes of the ``.sws`` file it
would write.  It records these figures in the epoch's history record
(``pp_val_error``, ``pp_nonzero_share``, ``pp_cr``, ``pp_bytes``) and keeps the
retrained state (network and prior) whose post-processed network has the
highest compression rate with a validation error at most ``max_error_increase``
points above the pretrained network's.  Retraining stops when that best state
has not improved for ``patience`` epochs.  When no state meets the budget the
one with the lowest post-processed validation error is kept and the decision
says so.  With ``watch_every`` steps (``RetrainConfig.watch_every``) the network
is also watched within epochs (``Budget.midway``): for epochs too long to wait
for, the kept state and the early stop then come from any of those watches,
which the epoch's record lists under ``watches``.  With the budget off (``--no-budget``) the figures are still recorded
and the last state is kept, as in the tutorial.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from sws.method import files
from sws.method.evaluate import evaluate
from sws.method.postprocess import layer_stats, postprocess_, recalibrate_batchnorm

__all__ = ["Budget", "OVER_BUDGET_EXIT", "kept_record"]

OVER_BUDGET_EXIT = 3   # ``sws run`` / ``sws retrain`` exit status when no state met the budget


class Budget:
    """The watch of the post-processed network and the choice of the state to keep.

    Args:
      model, prior, covered: the network being retrained, its prior and the covered
        parameters by name.
      val: the validation set (None: nothing is watched, the budget is off).
      threshold, dead_units: post-processing settings (``QuantizeConfig``).
      max_error_increase: the budget in points of validation error over
        ``reference_error`` (the pretrained network's); None: off.
      patience: watches (epoch ends, and the watches within epochs with ``watch_every``) without
        a better state before retraining stops (0: never stops early).
      recalibrate: a training set for batch-norm statistics of the copy (first batches only).
      eval_kw: ``loss_fn``, ``output``, ``device`` for ``evaluate``.
      header: the ``name=`` / header fields the file will be written with (its size counts).
    """

    def __init__(self, model, prior, covered: dict, val, *, threshold: float, dead_units: bool = True,
                 max_error_increase: float | None = 0.3, reference_error: float | None = None,
                 patience: int = 5, recalibrate=None, eval_kw: dict | None = None, header: dict | None = None,
                 tau_control: float = 1.0):
        self.model, self.prior, self.covered, self.val = model, prior, covered, val
        self.threshold, self.dead_units = threshold, dead_units
        self.recalibrate, self.eval_kw, self.header = recalibrate, dict(eval_kw or {}), dict(header or {})
        self.max_error_increase = max_error_increase if val is not None else None
        self.patience = patience
        self.reference_error = reference_error
        if val is not None and reference_error is None:
            self.reference_error = evaluate(model, val, **self.eval_kw).get("error")
        if self.reference_error is None:          # not a classifier: nothing to budget
            self.max_error_increase = None
        self.best: dict | None = None             # epoch, figures and state of the kept state
        self.lowest: dict | None = None           # the state with the lowest error (over budget)
        self.since = 0                            # watches since the kept state improved
        self.pending: list[dict] = []             # this epoch's watches so far (``midway``)
        self.tau_control = tau_control if self.active else 1.0
        self.tau_scale = 1.0                      # what the loop multiplies tau by (the controller)
        self.snapping = False                     # in the snap phase (``begin_snap``)

    @property
    def active(self) -> bool:
        return self.max_error_increase is not None

    @property
    def limit(self) -> float | None:
        return None if not self.active else self.reference_error + self.max_error_increase / 100.0

    @torch.no_grad()
    def watch(self) -> dict:
        """Post-process a copy of the network; its validation figures and file size."""
        if self.val is None:
            return {}
        with torch.random.fork_rng(devices=[]):
            net = copy.deepcopy(self.model)
            named = dict(net.named_parameters())   # a ScriptModule has no get_parameter
            covered = {name: named[name] for name in self.covered}
            q = postprocess_(net, self.prior, covered, self.threshold, dead_units=self.dead_units,
                             recalibrate=None, probe=self.val)
            if self.recalibrate is not None:
                recalibrate_batchnorm(net, self.recalibrate, max_batches=20)
            scores = evaluate(net, self.val, **self.eval_kw)
        blob = files.encode_module(net, codebook=q.codebook, quantized=q.names, **self.header)
        values = sum(t.numel() for t in {id(t): t for t in net.state_dict(keep_vars=True).values()}.values())
        stats = layer_stats(covered)["total"]
        rec = {f"pp_val_{k}": v for k, v in scores.items()}
        rec.update(pp_nonzero_share=stats["nonzero_share"], pp_distinct_values=stats["distinct"],
                   pp_bytes=len(blob), pp_cr=32 * values / (8 * len(blob)))
        if self.active:
            rec["pp_within_budget"] = bool(rec["pp_val_error"] <= self.limit + 1e-12)
        return rec

    def _state(self) -> dict:
        return {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "prior": {k: v.detach().clone() for k, v in self.prior.state_dict().items()}}

    def __call__(self, rec: dict) -> bool:
        """The loop's ``on_epoch`` hook: record the figures, keep the best state; True: stop."""
        rec.update(self.watch())
        if self.pending:
            rec["watches"], self.pending = self.pending, []
        if not self.active or "pp_val_error" not in rec:
            return False
        stop = self._keep(rec)
        self._control(rec)
        return stop

    def midway(self, epoch: int, step: int, steps: int, snapped=None) -> bool:
        """A watch within epoch ``epoch`` after ``step`` of its ``steps`` steps (the loop calls it
        every ``watch_every`` steps): the retrained and the post-processed network's validation
        figures, kept as a state when best; True: stop.  Recorded at the fractional epoch.
        ``snapped``: in the snap phase, the context in which the network is the one trained."""
        if self.val is None:
            return False
        rec = {"epoch": round(epoch - 1 + step / steps, 6), "step": step}
        if snapped is not None:
            rec["snap"] = True
        with snapped() if snapped is not None else contextlib.nullcontext():
            rec.update({f"val_{k}": v for k, v in evaluate(self.model, self.val, **self.eval_kw).items()})
        rec.update(self.watch())
        stop = self._keep(rec) if self.active else False
        self.pending.append(rec)
        return stop

    def begin_snap(self) -> None:
        """The snap phase begins: the kept state (or, over budget, the lowest-error one) goes back
        into the model and prior, and patience counts again from here."""
        self._restore(self.best if self.best is not None else self.lowest)
        self.since, self.snapping = 0, True

    def _restore(self, chosen: dict | None) -> None:
        """Load a kept entry's state (if it holds one) into the model and prior."""
        if chosen is not None and chosen.get("state") is not None:
            self.model.load_state_dict(chosen["state"]["model"])
            self.prior.load_state_dict(chosen["state"]["prior"])

    def _keep(self, rec: dict) -> bool:
        """Keep the state if it is the best within budget so far (or the lowest error); True: stop."""
        figures = {k: rec[k] for k in ("pp_val_error", "pp_cr", "pp_nonzero_share", "pp_bytes")}
        entry = {"epoch": rec["epoch"], **figures}
        if self.lowest is None or rec["pp_val_error"] < self.lowest["pp_val_error"]:
            self.lowest = {**entry, "state": self._state() if self.best is None else None}
        if rec["pp_within_budget"] and (self.best is None or rec["pp_cr"] > self.best["pp_cr"]):
            self.best, self.since = {**entry, "state": self._state()}, 0
            self.lowest["state"] = None           # the best within budget is what is kept now
        else:
            self.since += 1
        rec["pp_kept_epoch"] = self.best["epoch"] if self.best else None
        return bool(self.best is not None and self.patience and self.since >= self.patience)

    def _control(self, rec: dict) -> None:
        """The tau controller: the retrained network may spend half the budget, snapping the
        other half.  When the retrained network's validation error is above the reference plus
        half the budget, relax tau; otherwise tighten it (tighter clusters make snapping cheaper,
        and a state within budget may compress further)."""
        if self.tau_control == 1.0:
            return
        retrained = rec.get("val_error")
        if retrained is not None and retrained > self.reference_error + self.max_error_increase / 200.0:
            self.tau_scale /= self.tau_control
        else:
            self.tau_scale *= self.tau_control
        rec["tau_scale_next"] = self.tau_scale

    def decide(self) -> dict:
        """Load the kept state into the model and prior; what was chosen and why.

        ``status``: "within" (the best state within budget), "over" (none met it: the lowest
        error), or "off" (no budget: the last state)."""
        limit = self.limit
        base = {"budget_points": self.max_error_increase, "reference_val_error": self.reference_error,
                "limit_val_error": limit}
        if not self.active:
            return {**base, "status": "off"}
        chosen = self.best if self.best is not None else self.lowest
        if chosen is None:
            return {**base, "status": "off"}
        self._restore(chosen)
        status = "within" if self.best is not None else "over"
        out = {**base, "status": status, **{k: v for k, v in chosen.items() if k != "state"}}
        if status == "over":
            out["message"] = (f"no state met the accuracy budget: the lowest post-processed validation error "
                              f"was {100 * chosen['pp_val_error']:.2f} % (epoch {chosen['epoch']}, CR "
                              f"{chosen['pp_cr']:.1f}), the budget {100 * limit:.2f} % (pretrained "
                              f"{100 * self.reference_error:.2f} % + {self.max_error_increase:g} points); "
                              "keeping it; retrain longer, lower --tau or raise --max-error-increase")
        else:
            out["message"] = (f"kept epoch {chosen['epoch']}: post-processed validation error "
                              f"{100 * chosen['pp_val_error']:.2f} % within {100 * limit:.2f} % "
                              f"(pretrained {100 * self.reference_error:.2f} % + {self.max_error_increase:g} "
                              f"points), CR {chosen['pp_cr']:.1f}")
        return out

    @staticmethod
    def final(decision: dict, val_error: float | None, finetune_epochs: int = 0) -> dict:
        """The decision re-checked on the network the user keeps (after the codebook's fine-tuning):
        its validation error against the same limit."""
        limit = decision.get("limit_val_error")
        if limit is None or val_error is None:
            return decision
        within = val_error <= limit + 1e-12
        out = {**decision, "final_val_error": val_error, "status": "within" if within else "over"}
        tuned = f" after {finetune_epochs} epochs of codebook fine-tuning" if finetune_epochs else ""
        head = "" if within else "no state met the accuracy budget: "
        out["message"] = (f"{head}kept epoch {decision.get('epoch')}: post-processed validation error{tuned} "
                          f"{100 * val_error:.2f} % {'within' if within else 'over'} the budget "
                          f"{100 * limit:.2f} % (pretrained {100 * decision['reference_val_error']:.2f} % + "
                          f"{decision['budget_points']:g} points), CR {decision.get('pp_cr', float('nan')):.1f}"
                          + ("" if within else "; retrain longer, lower --tau or raise --max-error-increase"))
        return out

    # resumable: the kept states travel with the training state
    def state_dict(self) -> tuple[dict, dict]:
        tensors, meta = {}, {"reference_error": self.reference_error, "since": self.since,
                             "tau_scale": self.tau_scale, "pending": self.pending, "snapping": self.snapping}
        for slot in ("best", "lowest"):
            entry = getattr(self, slot)
            if entry is None:
                continue
            meta[slot] = {k: v for k, v in entry.items() if k != "state"}
            if entry.get("state") is not None:
                meta[slot]["has_state"] = True
                for part, sd in entry["state"].items():
                    tensors.update({f"{slot}.{part}.{k}": v for k, v in sd.items()})
        return tensors, meta

    def load_state_dict(self, tensors: dict, meta: dict) -> None:
        self.reference_error = meta.get("reference_error", self.reference_error)
        self.since = int(meta.get("since", 0))
        self.tau_scale = float(meta.get("tau_scale", 1.0))
        self.pending = list(meta.get("pending", []))
        self.snapping = bool(meta.get("snapping", False))
        for slot in ("best", "lowest"):
            entry = meta.get(slot)
            if entry is None:
                setattr(self, slot, None)
                continue
            entry = dict(entry)
            state = None
            if entry.pop("has_state", False):
                state = {"model": {}, "prior": {}}
                for k, v in tensors.items():
                    s, _, rest = k.partition(".")
                    if s == slot:
                        part, _, name = rest.partition(".")
                        state[part][name] = v
            setattr(self, slot, {**entry, "state": state})


def kept_record(history: list[dict], decision: dict) -> dict:
    """The history's record of the kept state: an epoch's, or one of its ``watches`` (with the
    epoch's other figures), else the last epoch's."""
    epoch = decision.get("epoch")
    for rec in history:
        if rec.get("epoch") == epoch:
            return rec
        for w in rec.get("watches", ()):
            if w.get("epoch") == epoch:
                return {**{k: v for k, v in rec.items() if k != "watches" and not k.startswith(("val_", "test_"))},
                        **w}
    return history[-1]

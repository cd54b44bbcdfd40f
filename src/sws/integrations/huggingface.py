"""Soft weight-sharing inside the Hugging Face ``Trainer`` (``pip install sws[huggingface]``).

::

    from sws.integrations.huggingface import SoftWeightSharingCallback
    cb = SoftWeightSharingCallback("tutorial", out="model.sws", init="range")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[cb])
    trainer.train()                    # retrains with the prior; at the end quantises and writes model.sws
    trainer.evaluate()                 # the quantised network
    net = sws.load("model.sws", model=BertForSequenceClassification(config))

How it hooks in (transformers >= 4.45, which calls ``on_pre_optimizer_step``):

- ``on_train_begin``: the prior is attached to the model (``sws.SoftWeightSharing``, N = the
  training set's size unless ``n_train=`` is given) with an Adam of its own for the
  mixture's three learning rates (``sws.integrations._common``): the Trainer's optimiser
  and scheduler are built before any callback runs and stay as they are.
- ``on_pre_optimizer_step`` (after backward and gradient clipping, once per optimiser step
  whatever the gradient accumulation): adds (tau / N) dC/dp to the gradients and steps
  the mixture; tau follows the config's schedule in fractional epochs.
- ``on_log``: the mean complexity term since the last log, tau and the mixture's state
  (``sws/complexity``, ``sws/tau``, ``sws/sd0``, ``sws/pi0``, ``sws/mean_min``,
  ``sws/mean_max``) go into the training logs and ``trainer.state.log_history``.  Callbacks
  run in order and the Trainer's reporters (TensorBoard, W&B, ...) come first, so to reach
  them as well use ``SoftWeightSharingTrainer``, which adds the values before logging.
- ``on_save``: the prior's state goes into the checkpoint folder (``sws_prior.pt``), and a
  ``trainer.train(resume_from_checkpoint=...)`` restores it.
- ``on_train_end``: merge, snap, drop dead units, re-estimate batch-norm statistics on the
  training set (models with batch-norm), check the post-processed network on the evaluation
  set (the guard: within ``max_error_increase`` points of the trained network, else no file
  and the trained weights back), write ``out``; the numbers are appended to ``log_history``
  and kept in ``callback.result``.

With ``fp16`` keep ``max_grad_norm > 0`` (the default 1.0): the Trainer unscales the
gradients when it clips them, before this callback adds to them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

try:
    from transformers import Trainer, TrainerCallback
except ImportError as e:     # pragma: no cover - the extra is missing
    raise ImportError("sws.integrations.huggingface needs transformers: pip install 'sws[huggingface]'") from e

from sws.integrations._common import Driver

__all__ = ["SoftWeightSharingCallback", "SoftWeightSharingTrainer", "STATE_FILE"]

STATE_FILE = "sws_prior.pt"    # the prior's state inside a Trainer checkpoint folder


def _dataset_len(loader):
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


class SoftWeightSharingCallback(TrainerCallback):
    """Retrain with the mixture prior under the ``Trainer``; quantise and write ``out`` at the end.

    Args:
      config: a preset name (``"tutorial"``, ``"paper"``, ``"resnet"``) or a ``RetrainConfig``;
        ``overrides`` (``tau=``, ``init="range"``, ``n_components=``, ...) apply to a preset.
        The mixture's learning rates come from it; the network's from ``TrainingArguments``.
      out: the ``.sws`` file written at the end of training (None: quantise only); an existing
        file is refused when training begins unless ``overwrite=True`` is passed.
      n_train: N in tau / N [the training set's size].
      include, exclude: which parameters the prior covers (``sws.select_parameters``).
      merge_threshold, dead_units: post-processing settings [the defaults of ``sws quantize``].
      recalibrate: re-estimate batch-norm statistics after snapping on the training set
        (True), on this dataset of ``(input, target)`` pairs, or not (False).
      val: the guard's validation data: True the Trainer's evaluation set (when it has evaluated,
        or always under ``SoftWeightSharingTrainer``), a Dataset / DataLoader, or None (no
        guard).  If post-processing costs more than ``max_error_increase`` points of its error
        the model keeps its trained weights and no file is written (``result["sws/status"]``
        "over", with a warning).
    """

    def __init__(self, config="tutorial", out=None, *, n_train: int | None = None, include=None, exclude=None,
                 merge_threshold: float | None = None, dead_units: bool | None = None, recalibrate=True,
                 val=True, **overrides):
        self.driver = Driver(config, out, n_train=n_train, include=include, exclude=exclude,
                             merge_threshold=merge_threshold, dead_units=dead_units, recalibrate=recalibrate,
                             val=val, **overrides)
        self._model = None
        self._eval_loader = None      # SoftWeightSharingTrainer: its evaluation loader

    @property
    def sws(self):
        """The ``sws.SoftWeightSharing`` attached to the model (None before training)."""
        return self.driver.sws

    @property
    def result(self) -> dict | None:
        """What the end of training did: non-zero share, distinct values, file bytes, CR."""
        return self.driver.result

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if self.driver.attached and self._model is model:
            return
        self.driver.attach(model, _dataset_len(train_dataloader))
        self._model = model
        if state.global_step > 0:      # resume_from_checkpoint: the prior's state is in the folder
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            if path.is_file():
                self.driver.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.driver.step(state.epoch or 0.0, state.global_step, state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if self.driver.attached and self.driver.sws.steps_done == 0:
            from sws.errors import ConfigError
            raise ConfigError("this transformers version does not call on_pre_optimizer_step, so the prior's "
                              "gradient was never added: upgrade transformers (>= 4.45)")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self.driver.attached or "loss" not in logs or "sws/complexity" in logs:
            return
        values = self.driver.values()
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_save(self, args, state, control, **kwargs):
        if not self.driver.attached or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            tmp = folder / (STATE_FILE + ".tmp")
            torch.save(self.driver.state_dict(), tmp)
            os.replace(tmp, folder / STATE_FILE)

    def on_train_end(self, args, state, control, train_dataloader=None, eval_dataloader=None, **kwargs):
        if not self.driver.attached:
            return
        if eval_dataloader is None and self._eval_loader is not None:
            eval_dataloader = self._eval_loader()
        res = self.driver.finish(train_dataloader, write=state.is_world_process_zero, val_loader=eval_dataloader)
        state.log_history.append({**res, "step": state.global_step})


class SoftWeightSharingTrainer(Trainer):
    """A ``Trainer`` whose every reporter sees the prior's values (they are added before logging).

    ``SoftWeightSharingTrainer(model=..., args=..., sws=SoftWeightSharingCallback(...), ...)``;
    the callback may also be given in ``callbacks=``, or is created with the defaults
    (``"tutorial"``, no file) when neither names one.
    """

    def __init__(self, *args, sws: SoftWeightSharingCallback | None = None, **kwargs):
        callbacks = list(kwargs.pop("callbacks", None) or [])
        given = [c for c in callbacks if isinstance(c, SoftWeightSharingCallback)]
        if sws is None:
            sws = given[0] if given else SoftWeightSharingCallback()
        if sws not in callbacks:
            callbacks.append(sws)
        super().__init__(*args, callbacks=callbacks, **kwargs)
        self.sws_callback = sws
        sws._eval_loader = lambda: self.get_eval_dataloader() if self.eval_dataset is not None else None

    def log(self, logs, *args, **kwargs):
        d = self.sws_callback.driver
        if d.attached and "loss" in logs and "sws/complexity" not in logs:
            logs.update(d.values())
        return super().log(logs, *args, **kwargs)

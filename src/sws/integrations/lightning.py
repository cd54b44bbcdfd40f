"""Soft weight-sharing as a PyTorch Lightning callback (``pip install sws[lightning]``).

::

    from sws.integrations.lightning import SoftWeightSharingCallback
    cb = SoftWeightSharingCallback("tutorial", out="model.sws", module="net", init="range")
    trainer = lightning.Trainer(max_epochs=10, callbacks=[cb])
    trainer.fit(lit_module, train_loader, val_loader)   # retrains with the prior, ends quantised
    trainer.validate(lit_module, val_loader)            # the quantised network
    net = sws.load("model.sws", model=MyNet())          # what ``module`` named ("net")

How it hooks in:

- ``on_train_start`` (the model is on its device, the data loaders exist): the prior is
  attached to ``pl_module`` or to its submodule ``module`` (N = the training set's size
  unless ``n_train=`` is given), with an Adam of its own for the mixture's three learning
  rates; the optimisers and schedulers of ``configure_optimizers`` stay as they are.
- ``on_before_optimizer_step`` (after backward and, with mixed precision, unscaling; before
  gradient clipping and the step; once per optimiser step whatever
  ``accumulate_grad_batches``): adds (tau / N) dC/dp to the gradients and steps the mixture.
  Only an optimiser that holds the covered weights gets the prior's gradient.
- ``on_train_batch_end``: ``pl_module.log_dict`` of the mean complexity term since the last
  batch, tau and the mixture's state (``sws/complexity``, ``sws/tau``, ``sws/sd0``, ``sws/pi0``,
  ``sws/mean_min``, ``sws/mean_max``): every logger Lightning has receives them.
- ``state_dict`` / ``load_state_dict``: the prior and its optimiser travel in Lightning's
  checkpoints, so ``trainer.fit(..., ckpt_path=...)`` resumes the mixture too.
- ``on_train_end``: merge, snap, drop dead units, re-estimate batch-norm statistics on the
  training loader (models with batch-norm), check the post-processed network on the
  validation loader (the guard: within ``max_error_increase`` points of the trained network,
  else no file and the trained weights back), write ``out`` on global rank zero; the numbers
  go to the loggers (``log_metrics``) and stay in ``callback.result``.
"""

from __future__ import annotations

import math

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:   # the standalone package
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as e:   # pragma: no cover - the extra is missing
        raise ImportError("sws.integrations.lightning needs lightning: pip install 'sws[lightning]'") from e

from sws.integrations._common import Driver

__all__ = ["SoftWeightSharingCallback"]


class SoftWeightSharingCallback(Callback):
    """Retrain with the mixture prior under Lightning; quantise and write ``out`` at the end.

    Args:
      config: a preset name (``"tutorial"``, ``"paper"``, ``"resnet"``) or a ``RetrainConfig``;
        ``overrides`` (``tau=``, ``init="range"``, ...) apply to a preset.  The mixture's
        learning rates come from it; the network's from ``configure_optimizers``.
      out: the ``.sws`` file written at the end of training (None: quantise only); an existing
        file is refused when training begins unless ``overwrite=True`` is passed.
      module: the attribute path of the submodule to compress (``"net"``); None: the whole
        LightningModule.  ``sws.load(out, model=...)`` takes an instance of that module.
      n_train: N in tau / N [the training set's size].
      include, exclude: which parameters the prior covers (``sws.select_parameters``), names
        relative to ``module``.
      merge_threshold, dead_units: post-processing settings.
      recalibrate: re-estimate batch-norm statistics after snapping on the training loader
        (True), on this dataset of ``(input, target)`` pairs, or not (False).
      val: the guard's validation data: True the Trainer's validation loader (the first), a
        Dataset / DataLoader, or None (no guard).  If post-processing costs more than
        ``max_error_increase`` points of its error (the target module's outputs on it), the
        module keeps its trained weights and no file is written (``result["sws/status"]``
        "over", with a warning).
    """

    def __init__(self, config="tutorial", out=None, *, module: str | None = None, n_train: int | None = None,
                 include=None, exclude=None, merge_threshold: float | None = None, dead_units: bool | None = None,
                 recalibrate=True, val=True, **overrides):
        super().__init__()
        self.driver = Driver(config, out, n_train=n_train, include=include, exclude=exclude,
                             merge_threshold=merge_threshold, dead_units=dead_units, recalibrate=recalibrate,
                             val=val, **overrides)
        self.module = module
        self._model = None
        self._batch_idx = 0
        self._stepped = False

    @property
    def sws(self):
        """The ``sws.SoftWeightSharing`` attached to the model (None before training)."""
        return self.driver.sws

    @property
    def result(self) -> dict | None:
        """What the end of training did: non-zero share, distinct values, file bytes, CR."""
        return self.driver.result

    def _target(self, pl_module):
        return pl_module.get_submodule(self.module) if self.module else pl_module

    def on_train_start(self, trainer, pl_module):
        target = self._target(pl_module)
        if self.driver.attached and self._model is target:
            return
        loader = trainer.train_dataloader
        try:
            n = len(loader.dataset)
        except (AttributeError, TypeError):
            n = None
        self.driver.attach(target, n)
        self._model = target
        self._first = next(iter(self.driver.sws.covered.values()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch_idx = batch_idx

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.driver.attached:
            return
        if not any(p is self._first for g in optimizer.param_groups for p in g["params"]):
            return    # another optimiser (manual optimisation with several): not the covered weights
        total = trainer.estimated_stepping_batches
        total = int(total) if isinstance(total, (int, float)) and math.isfinite(total) else None
        epoch = trainer.current_epoch + self._batch_idx / max(trainer.num_training_batches or 1, 1)
        self.driver.step(epoch, trainer.global_step, total)
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._stepped:
            self._stepped = False
            pl_module.log_dict(self.driver.values(), on_step=True, on_epoch=False, batch_size=1)

    def on_train_end(self, trainer, pl_module):
        if not self.driver.attached:
            return
        res = self.driver.finish(trainer.train_dataloader, write=trainer.is_global_zero,
                                 val_loader=trainer.val_dataloaders)
        numbers = {k: float(v) for k, v in res.items() if isinstance(v, (int, float))}
        for logger in trainer.loggers:
            logger.log_metrics(numbers, step=trainer.global_step)

    def state_dict(self) -> dict:
        return self.driver.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.driver.load_state_dict(state_dict)

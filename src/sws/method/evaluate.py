"""One evaluation for every network and data set, with one set of keys.

``evaluate`` returns ``{"loss": ...}`` and, where the outputs are class scores
for integer labels, ``"accuracy"`` and ``"error"`` as well.  Every stage, the
history, the search, ``compress`` and the CLI record these keys (prefixed by
the split: ``val_error``, ``test_accuracy``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from sws.method.batches import as_source, call_model, default_loss, logits_of, scalar_loss, to_device

__all__ = ["evaluate", "evaluate_splits"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, data, *, loss_fn: Callable | None = None,
             output: Callable | None = None, batch_size: int = 1000, device=None) -> dict:
    """Mean loss, and accuracy / error for class scores, of ``model`` on ``data``.

    Args:
      data: a Dataset or DataLoader of (input, target) pairs (``sws.method.batches``).
      loss_fn: ``loss_fn(scores, target)``, mean over the batch (default cross-entropy).
      output: picks the scores from the model's output (default ``logits_of``).
    """
    source = dataclasses.replace(as_source(data, "evaluation data"), drop_last=False, passes=1)   # each item once
    device = device or next(model.parameters()).device
    loss_fn = loss_fn or default_loss
    output = output or logits_of
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    labels, classify = 0, True
    try:
        for _, (x, y) in source.epoch(batch_size):
            x, y = to_device(x, device), to_device(y, device)
            scores = output(call_model(model, x))
            loss += scalar_loss(loss_fn(scores, y)).double() * len(y)
            classify = (classify and torch.is_tensor(y) and not y.is_floating_point()
                        and scores.dim() == y.dim() + 1)
            if classify:
                mask = y != -100                      # ignored positions of sequence labels
                correct += ((scores.argmax(-1) == y) & mask).sum()
                labels += int(mask.sum())
    finally:
        model.train(was_training)
    rec = {"loss": loss.item() / max(len(source), 1)}
    if classify:
        acc = correct.item() / max(labels, 1)
        rec.update(accuracy=acc, error=1.0 - acc)
    return rec


def evaluate_splits(model, splits: dict, **kw) -> dict:
    """``{split_key: value}`` for every (name, data) in ``splits`` that is not None."""
    rec = {}
    for name, data in splits.items():
        if data is not None:
            rec.update({f"{name}_{k}": v for k, v in evaluate(model, data, **kw).items()})
    return rec

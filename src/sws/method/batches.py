"""What the training loop feeds a model: seeded batch order, devices, and model outputs.

The loop owns the batch order (a seeded permutation per epoch, sharded over
processes under DDP) so that a resumed run draws the same batches as one that
never stopped.  A ``torch.utils.data.TensorDataset`` (the reference data sets
are one) is batched by indexing its tensors; any other map-style dataset of
``(input, target)`` pairs goes through ``default_collate`` (or the collate
function of the DataLoader it came in).

Model outputs: a tensor, a tuple or list whose first item is the class scores,
a mapping with ``"logits"``, or an object with a ``.logits`` attribute (as
Hugging Face models return) all work without wrappers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler, Subset,
                              SubsetRandomSampler, TensorDataset, default_collate)

from sws.errors import ConfigError, DataError

__all__ = ["Source", "as_source", "to_device", "call_model", "logits_of", "default_loss", "distillation_loss",
           "scalar_loss"]


@dataclass
class Source:
    """A map-style dataset and how to collate its items (``collate`` None: index tensors)."""

    dataset: object
    collate: Callable | None
    batch_size: int | None = None        # the DataLoader's, when one was given
    drop_last: bool = False              # training leaves out a last batch smaller than the others
    passes: int = 1                      # passes over the dataset per epoch (sws.config.passes_per_epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, index: torch.Tensor):
        """The (input, target) batch of the items at ``index``."""
        if self.collate is None:
            return tuple(t[index] for t in self.dataset.tensors)
        items = [self.dataset[i] for i in index.tolist()]
        return self.collate(items)

    def epoch(self, batch_size: int, generator: torch.Generator | None = None, skip: int = 0,
              rank: int = 0, world: int = 1):
        """One epoch's batches: a permutation drawn from ``generator`` (in order when None),
        this process's shard of it (padded by wrapping so every process takes the same number
        of steps), cut into batches; the first ``skip`` batches are left out (a resume)."""
        def one_pass():
            m = len(self.dataset)
            return torch.randperm(m, generator=generator) if generator is not None else torch.arange(m)
        # several passes (a small training set, sws.config.passes_per_epoch): each its own permutation
        order = one_pass() if self.passes == 1 else torch.cat([one_pass() for _ in range(self.passes)])
        n = len(order)
        if world > 1:
            per = -(-n // world)
            order = torch.cat([order, order[:per * world - n]])[rank::world]
        for step, start in enumerate(range(0, len(order), batch_size)):
            if self.drop_last and start + batch_size > len(order):
                break
            if step >= skip:
                yield step, self.batch(order[start:start + batch_size])

    def steps(self, batch_size: int, world: int = 1) -> int:
        """Batches per epoch for one process."""
        per = -(-len(self.dataset) * self.passes // world)
        return per // batch_size if self.drop_last else -(-per // batch_size)


def as_source(data, what: str = "training data") -> Source | None:
    """A ``Source`` for a Dataset, a DataLoader or None.  Of a DataLoader the dataset, batch size,
    ``drop_last`` and collate function are used, and a ``SubsetRandomSampler``'s indices (the
    loop draws the order itself, and shards it under DDP, so a ``DistributedSampler`` is not
    needed); another sampler or batch sampler raises ``ConfigError``: its order would be lost."""
    if data is None or isinstance(data, Source):
        return data
    batch_size = None
    collate = None
    drop_last = False
    if isinstance(data, DataLoader):
        batch_size, drop_last = data.batch_size, bool(data.drop_last)
        if data.collate_fn is not default_collate:
            collate = data.collate_fn
        sampler = data.sampler
        if type(data.batch_sampler) is not BatchSampler:
            raise ConfigError(f"{what}: a DataLoader's batch sampler ({type(data.batch_sampler).__name__}) cannot "
                              "be used: the loop draws its own seeded batches; pass the Dataset and batch_size=")
        every_item_once = isinstance(sampler, (SequentialSampler, DistributedSampler)) or (
            isinstance(sampler, RandomSampler) and not sampler.replacement and sampler._num_samples is None)
        if isinstance(sampler, SubsetRandomSampler):
            data = Subset(data.dataset, [int(i) for i in sampler.indices])
        elif not every_item_once:
            raise ConfigError(f"{what}: a DataLoader's {type(sampler).__name__} cannot be used: the loop draws "
                              "its own seeded order over every item; pass the Dataset (a "
                              "torch.utils.data.Subset for a part of it)")
        else:
            data = data.dataset
    try:
        n = len(data)
    except TypeError:
        raise DataError(f"{what} must be a map-style Dataset of (input, target) pairs with a length, "
                        f"got {type(data).__name__}") from None
    if not hasattr(data, "__getitem__"):
        raise DataError(f"{what} must be indexable (a map-style Dataset), got {type(data).__name__}")
    if n == 0:
        raise DataError(f"{what} is empty")
    if isinstance(data, TensorDataset) and collate is None:
        if len(data.tensors) != 2:
            raise DataError(f"{what}: a TensorDataset of (input, target) needs 2 tensors, has {len(data.tensors)}")
        return Source(data, None, batch_size, drop_last)
    item = data[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise DataError(f"{what}: items must be (input, target) pairs, the first is "
                        f"{type(item).__name__}" + (f" of length {len(item)}" if hasattr(item, "__len__") else ""))
    return Source(data, collate or default_collate, batch_size, drop_last)


def to_device(batch, device):
    """Move tensors (inside tuples, lists and dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if hasattr(batch, "to") and hasattr(batch, "keys"):    # transformers' BatchEncoding
        return batch.to(device)
    return batch


def call_model(model, x):
    """``model(**x)`` for a mapping of inputs (tokenised text), else ``model(x)``."""
    if isinstance(x, dict) or (hasattr(x, "keys") and hasattr(x, "__getitem__") and not torch.is_tensor(x)):
        return model(**x)
    return model(x)


def logits_of(out):
    """The class scores in a model's output: the tensor itself, the first item of a tuple or
    list, ``out["logits"]`` or ``out.logits``."""
    if torch.is_tensor(out):
        return out
    logits = getattr(out, "logits", None)
    if torch.is_tensor(logits):
        return logits
    if isinstance(out, dict) and torch.is_tensor(out.get("logits")):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    raise ConfigError(f"cannot find the class scores in a model output of type {type(out).__name__}; "
                      "pass output=FUNCTION (output -> tensor) or loss_fn=FUNCTION")


def scalar_loss(loss) -> torch.Tensor:
    """``loss`` if it is one number (a 0-d tensor or one element), else ``ConfigError``: the loop
    and the evaluation weight a batch's mean loss by the batch's size."""
    if not torch.is_tensor(loss) or loss.numel() != 1:
        shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
        raise ConfigError(f"loss_fn must return the batch's mean loss as one number, got {shape}: use "
                          "reduction='mean' (the default of torch's losses) or average it")
    return loss if loss.dim() == 0 else loss.reshape(())


def distillation_loss(scores: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(scores / T)) over the last dimension, averaged over
    every other position (Hinton et al. 2015): the teacher's soft targets."""
    t = temperature
    log_p = F.log_softmax(scores.reshape(-1, scores.shape[-1]).float() / t, dim=-1)
    log_q = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]).float() / t, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def default_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; sequence outputs (n, ..., classes) are flattened, label -100 ignored.
    Integer labels of any integer dtype (int32, bool, ...) are class indices; targets that do not
    fit the scores, float class labels and labels outside the classes raise ``DataError``."""
    if y.dtype != torch.long and not y.is_floating_point():
        y = y.long()
    if y.is_floating_point() and y.shape != scores.shape and y.dim() == scores.dim() - 1:
        raise DataError(f"the default loss (cross-entropy) takes class labels as integers, got {y.dtype} "
                        f"targets of shape {tuple(y.shape)}: convert them with .long() in your dataset, or "
                        "pass loss_fn= (e.g. torch.nn.functional.mse_loss for regression)")
    try:
        if scores.dim() > 2 and y.dim() == scores.dim() - 1:
            return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1), ignore_index=-100)
        return F.cross_entropy(scores, y)
    except (RuntimeError, ValueError, IndexError):
        if not y.is_floating_point() and y.numel() and scores.dim() > 1:   # found only on failing: no cost
            classes = scores.shape[-1]
            bad = (y != -100) & ((y < 0) | (y >= classes))
            if bool(bad.any()):
                raise DataError(f"a class label is {int(y[bad][0])}, outside 0..{classes - 1} for scores with "
                                f"{classes} classes: fix the labels, or give the model {classes}+ outputs") from None
        if y.dim() == scores.dim() - 1 or (y.is_floating_point() and y.shape == scores.shape):
            raise                        # shapes that fit: another problem, torch's message says which
        raise DataError(f"the default loss (cross-entropy over class scores) cannot take scores of shape "
                        f"{tuple(scores.shape)} with targets of shape {tuple(y.shape)}: targets must be class "
                        "indices of shape (batch,) (or probabilities shaped like the scores): reshape them in "
                        "your dataset, or pass loss_fn=") from None

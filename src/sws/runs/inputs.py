"""What a run folder's stages start from: the data, the network and the prior, rebuilt from
what the folder records (a reference net's name and MNIST settings, or ``PKG.MODULE:FUNCTION``
references to a user's model and data; ``sws.zoo.refs``), and pretrained weights from a file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from sws.config import PretrainConfig, PriorConfig, from_dict
from sws.errors import CheckpointError, DataError
from sws.method.batches import as_source, call_model
from sws.method.surface import select_parameters
from sws.prior import GaussianMixturePrior
from sws.storage import load_strict
from sws.zoo.mnist import load_mnist_test, mnist_splits, split_indices
from sws.zoo.models import MODELS
from sws.zoo.refs import resolve_data, resolve_model

__all__ = ["PRIOR_PREFIX", "data_settings", "load_data", "load_holdout", "load_splits", "load_test", "scoring_set",
           "check_fits", "model_from_checkpoint", "prior_from_checkpoint", "covered_of", "load_weights", "is_user",
           "header_of"]

PRIOR_PREFIX = "prior."


def data_settings(cfg: PretrainConfig) -> dict:
    """What a run records about its data: the reference (None: MNIST), subset, splits, seed."""
    return {"ref": cfg.data or None, "train_subset": cfg.train_subset, "val_size": cfg.val_size,
            **({"holdout_size": cfg.holdout_size} if cfg.holdout_size else {}), "seed": cfg.seed}


def load_splits(data: dict, data_dir=None) -> dict:
    """The "train", "val", "holdout" and "test" sets of the data settings recorded in a
    checkpoint (None where a split is empty), each loaded once."""
    holdout_size = data.get("holdout_size", 0)
    if not data.get("ref"):
        s = mnist_splits(data_dir, train_subset=data.get("train_subset") or None,
                         val_size=data.get("val_size", 0), holdout_size=holdout_size, seed=data.get("seed", 0))
        _check_images(s["train"], s["test"])
        return s
    train, val, test = resolve_data(data["ref"])
    if data.get("train_subset"):
        train = torch.utils.data.Subset(train, range(min(data["train_subset"], len(train))))
    val_size = max(data.get("val_size", 0), 0) if val is None else 0   # AUTO_VAL is MNIST's alone
    split = split_indices(len(train), val_size, holdout_size, data.get("seed", 0))
    holdout = None
    if split is not None:
        v, h, rest = (torch.utils.data.Subset(train, ix.tolist()) for ix in split)
        val = v if val_size else val
        holdout = h if holdout_size else None
        train = rest
    return {"train": train, "val": val, "holdout": holdout, "test": test}


def load_data(data: dict, data_dir=None):
    """(train, val, test) for the data settings recorded in a checkpoint; the holdout
    (``load_holdout``) is in none of them."""
    s = load_splits(data, data_dir)
    return s["train"], s["val"], s["test"]


def load_holdout(data: dict | None, data_dir=None):
    """The holdout split of the recorded data settings (``--holdout-size``), or None: items
    neither trained on nor used by any of the run's choices, scored only to report."""
    if not data or not data.get("holdout_size"):
        return None
    return load_splits(data, data_dir)["holdout"]


def load_test(data: dict | None = None, data_dir=None):
    """The set a finished network is scored on: the test split (MNIST's alone, without reading
    the training images), else the validation split of a user's data."""
    if data and data.get("ref"):
        return scoring_set(data, data_dir)[0]
    test = load_mnist_test(data_dir)
    _check_images(None, test)
    return test


def _check_images(train, test):
    for name, d in (("training", train), ("test", test)):
        if d is not None and tuple(d.x.shape[1:]) != (1, 28, 28):
            raise DataError(f"{name} images have shape {tuple(d.x.shape[2:])}, the models take 28x28")


def check_fits(model, train, ref: str):
    """One forward pass on two training items, so a model/data mismatch is one clear line."""
    x, _ = as_source(train).batch(torch.arange(min(2, len(train))))
    try:
        with torch.no_grad():
            call_model(model.eval(), x)
    except Exception as e:  # noqa: BLE001 - the user's model meets the user's data
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise DataError(f"the model {ref} cannot take the training inputs (batch of shape {shape}): "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        model.train()


def model_from_checkpoint(tensors: dict, meta: dict, where: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the recorded model (by name or reference) and load its tensors strictly."""
    model = resolve_model(meta["model"], meta.get("input_norm", "none"))
    state = {k: v for k, v in tensors.items() if not k.startswith(PRIOR_PREFIX)}
    load_strict(model, state, where, f"tensors do not match model {meta['model']!r}")
    return model


def covered_of(model, prior_cfg: dict | PriorConfig) -> dict:
    """The parameters the prior covers (``sws.method.surface.select_parameters``)."""
    cover = prior_cfg["cover"] if isinstance(prior_cfg, dict) else prior_cfg.cover
    return select_parameters(model, cover=cover)


def prior_from_checkpoint(tensors: dict, meta: dict) -> GaussianMixturePrior:
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


def load_weights(model, path) -> None:
    """Pretrained weights from a safetensors file or a state dict (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: --weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise CheckpointError(f"{path}: not a safetensors file or a state dict "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    load_strict(model, state, str(path), "weights do not match the model")


def scoring_set(data: dict, data_dir, splits=None):
    """(data set, split name) a finished stage is scored on: the test set, else validation.

    ``splits``: what ``load_splits`` already returned for ``data``, if anything."""
    if data.get("ref"):
        s = splits or load_splits(data, data_dir)
        if s["test"] is None and s["val"] is None:
            raise DataError(f"--data {data['ref']}: has neither a test nor a validation set to evaluate on")
        return (s["test"], "test") if s["test"] is not None else (s["val"], "val")
    return (splits["test"] if splits else load_test(data, data_dir)), "test"




def is_user(meta: dict) -> bool:
    """Whether a checkpoint holds a user's model (named by reference) rather than a reference net."""
    return meta["model"] not in MODELS


def header_of(meta: dict) -> dict:
    """The header fields a run's ``.sws`` file is written with."""
    if is_user(meta):
        return {"factory": meta["model"]}
    return {"name": meta["model"], "input_norm": meta.get("input_norm", "none")}

"""A user's own model and data, named by reference: ``PKG.MODULE:FUNCTION``.

``sws run --model mypkg.nets:build --data mypkg.data:splits`` imports
``mypkg.nets`` (from the current folder first, as ``python -m`` does), calls
``build()`` for an ``nn.Module`` and ``splits()`` for ``(train, val, test)``
map-style Datasets of ``(input, target)`` pairs (``test`` may be None).  Run
folders record the references, so later commands rebuild the same objects.
Every way a reference can be wrong raises ``ConfigError`` or ``DataError``
with one line naming it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

import torch
from torch import nn

from sws.errors import ConfigError, DataError
from sws.zoo.models import MODELS, build_model

__all__ = ["is_ref", "import_ref", "resolve_model", "resolve_data", "check_pairs"]

_REF = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


def is_ref(text) -> bool:
    """Whether ``text`` looks like ``PKG.MODULE:FUNCTION``."""
    return isinstance(text, str) and bool(_REF.match(text))


def import_ref(ref: str, option: str):
    """The function a ``PKG.MODULE:FUNCTION`` reference names."""
    if not is_ref(ref):
        raise ConfigError(f"{option} {ref!r}: expected PKG.MODULE:FUNCTION (e.g. mypkg.nets:build)")
    module_name, func_name = ref.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module's
        raise ConfigError(f"{option} {ref}: cannot import module {module_name!r} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          "run from the folder holding it or add it to PYTHONPATH") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"{option} {ref}: module {module_name!r} has no function {func_name!r}")
    return func


def _call(func, ref: str, option: str):
    try:
        return func()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{option} {ref}: calling {ref.split(':')[1]}() failed "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def resolve_model(ref: str, input_norm: str = "none", seed: int | None = None,
                  init: str = "torch") -> nn.Module:
    """A reference net by name (``sws.zoo.models``), or the module ``PKG.MODULE:FUNCTION`` returns
    (seeded with ``seed`` before the call, so its initial weights are reproducible)."""
    if ref in MODELS:
        return build_model(ref, input_norm, seed=seed, init=init)
    func = import_ref(ref, "--model")
    if seed is not None:
        torch.manual_seed(seed)
    model = _call(func, ref, "--model")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {ref}: returned {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"--model {ref}: the module has no trainable parameters")
    return model


def check_pairs(data, name: str, ref: str) -> None:
    """A map-style Dataset of (input, target) pairs with at least one item, or ``DataError``."""
    if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        raise DataError(f"--data {ref}: the {name} set is a {type(data).__name__}, not a map-style "
                        "torch.utils.data.Dataset")
    if len(data) == 0:
        raise DataError(f"--data {ref}: the {name} set is empty")
    item = data[0]
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise DataError(f"--data {ref}: items of the {name} set must be (input, target) pairs, "
                        f"got {type(item).__name__}")


def resolve_data(ref: str):
    """``(train, val, test)`` from ``PKG.MODULE:FUNCTION``; val and test may be None."""
    func = import_ref(ref, "--data")
    out = _call(func, ref, "--data")
    if not (isinstance(out, (tuple, list)) and len(out) == 3):
        raise DataError(f"--data {ref}: returned {type(out).__name__}"
                        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                        + ", not (train, val, test)")
    train, val, test = out
    if train is None:
        raise DataError(f"--data {ref}: the training set is None")
    for name, d in (("training", train), ("validation", val), ("test", test)):
        if d is not None:
            check_pairs(d, name, ref)
    return train, val, test

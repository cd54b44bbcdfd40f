"""``sws.save`` and ``sws.load``: a network to and from a ``.sws`` file (``docs/FORMAT.md``).

One writer for every network: the module's ``state_dict`` (tied tensors stored
once, the other keys recorded as aliases), the quantised tensors sparse and
Huffman coded against the shared codebook, the rest raw.  A reference net is
rebuilt from the file alone; a user's module is loaded into an instance of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sws.errors import SwsError
from sws.format.container import FormatError, InconsistentPayloadError, MalformedHeaderError, encode, read
from sws.storage import atomic_write

__all__ = ["USER_PREFIX", "save", "encode_module", "load"]

USER_PREFIX = "user:"   # model names of user-defined modules (``sws.compress``); load needs the module


def _expand_aliases(path, m: dict, tensors: dict) -> dict:
    """Add the state-dict keys of tied tensors, stored once, under every name (``model.aliases``)."""
    aliases = m.get("aliases", {})
    if not isinstance(aliases, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v in tensors and k not in tensors
            for k, v in aliases.items()):
        raise MalformedHeaderError(f"{path}: model 'aliases' must map new names to stored tensors")
    return {**tensors, **{k: tensors[v] for k, v in aliases.items()}}


def load(path, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The network stored at ``path``, ready for inference (eval mode).

    A reference net (``sws.zoo.models``) is built from the file alone; it takes images
    as float tensors in [0, 1], shape (n, 1, 28, 28), and any input normalisation
    it was trained with is inside it.  A user-defined module (a file written by
    ``sws.compress``) is loaded into ``model``, an instance of the same
    architecture, whose ``state_dict`` keys and shapes must match the file; the
    values are copied, so the module keeps its device, dtypes and tied parameters.
    """
    from sws.zoo.models import build_model
    d = read(path)
    m = d.header["model"]
    tensors = _expand_aliases(path, m, d.tensors)
    if model is None:
        if m["name"].startswith(USER_PREFIX):
            raise FormatError(f"{path}: holds a user-defined model ({m['name'][len(USER_PREFIX):]}); "
                              "pass an instance of it: sws.load(path, model=module)")
        try:
            with torch.device("meta"):   # no random init, no memory: the file's tensors are used as they are
                model = build_model(m["name"], m.get("input_norm", "none"))
        except SwsError as e:
            raise MalformedHeaderError(f"{path}: {e}") from None
        assign = True
    else:
        assign = False
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:3]
        raise InconsistentPayloadError(f"{path}: tensors do not match model {m['name']!r} "
                                       f"(first differences: {diff})")
    model.load_state_dict(tensors, strict=True, assign=assign)
    return model.eval()


def save(path, model, *, codebook=None, quantized=None, name: str | None = None, **info) -> int:
    """Write a network as a ``.sws`` file, atomically; return its size in bytes.

    The one writer of the project: ``sws.compress``, the CLI, the search, the accuracy
    budget (which counts the bytes it would write) and the baselines all write through it.
    Arguments as ``encode_module``'s.
    """
    blob = encode_module(model, codebook=codebook, quantized=quantized, name=name, **info)
    atomic_write(Path(path), blob)
    return len(blob)


def encode_module(model, *, codebook=None, quantized=None, name: str | None = None, **info) -> bytes:
    """The bytes of a network's ``.sws`` file.

    Args:
      model: an ``nn.Module`` (its ``state_dict``; a tensor reachable under several
        keys, as with tied parameters, is stored once and the other keys recorded as
        aliases) or a state dict.
      codebook: shared values, entry 0 = 0.0; default: the distinct values of the
        quantised tensors.
      quantized: names of the tensors whose every value is a codebook entry (stored
        sparse); default: every tensor named '*weight' or '*bias'.
      name: the header's model name: a reference net's name (``sws.zoo.models``), which
        ``load`` rebuilds from the file alone; default for a module: ``user:CLASS``.
      info: more JSON-able header fields (``input_norm`` of a reference net).
    """
    header = {}
    aliases = {}
    if isinstance(model, torch.nn.Module):
        cls = type(model)
        if name is None:
            name = f"{USER_PREFIX}{cls.__qualname__}"
            header["class"] = f"{cls.__module__}.{cls.__qualname__}"
        first, state = {}, {}
        for key, t in model.state_dict(keep_vars=True).items():
            if id(t) in first:
                aliases[key] = first[id(t)]
            else:
                first[id(t)] = key
                state[key] = t.detach()
    else:
        if name is None:
            raise ValueError("a state dict needs name= (the model's name in the header)")
        state = dict(model)
    header = {"name": name, **header, **info}
    if aliases:
        header["aliases"] = aliases
    if quantized is None:
        quantized = [k for k in state if k.endswith(("weight", "bias"))]
    quantized = {aliases.get(n, n) for n in quantized}
    if codebook is None:
        vals = torch.cat([state[k].detach().reshape(-1).float().cpu() for k in quantized]) if quantized \
            else torch.zeros(0)
        vals = np.unique(vals.numpy())
        codebook = np.concatenate([[0.0], vals[vals != 0]]).astype(np.float32)
    return encode(state, codebook, [k for k in state if k in quantized], header)

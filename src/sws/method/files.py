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

from sws.errors import ConfigError, SwsError
from sws.format import container
from sws.format.container import (FormatError, InconsistentPayloadError, MalformedHeaderError, RoundTripError,
                                  encode, read)
from sws.storage import atomic_write

__all__ = ["USER_PREFIX", "save", "encode_module", "load", "check_storable"]

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


def check_storable(model: torch.nn.Module) -> None:
    """Raise ``ConfigError`` when a tensor of ``model``'s state dict has a dtype the file cannot
    store, before any training: the budget encodes the network every epoch and the file is
    written at the end."""
    params = {n for n, _ in model.named_parameters()}
    for name, t in model.state_dict().items():
        if t.dtype not in container.STORABLE_DTYPES:
            kinds = ", ".join(sorted(str(d).replace("torch.", "") for d in container.STORABLE_DTYPES))
            fix = "convert the model (model.float())" if name in params else \
                "convert the buffer or register it with persistent=False"
            raise ConfigError(f"{name} is {str(t.dtype).replace('torch.', '')}, which a .sws file cannot store "
                              f"({kinds}): {fix}")


def check_target(path, overwrite: bool = False) -> None:
    """Raise ``ConfigError`` before any training when ``path`` cannot take the file written at the
    end: it is a folder, a file where its folder should be, or a file and ``overwrite`` is false
    (a missing folder is made when the file is written)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give the path of the .sws file to write")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"{path}: {blocker} is a file, not a folder; choose another path")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists: pass overwrite=True to replace it, or choose another path")


def save(path, model, *, codebook=None, quantized=None, name: str | None = None, **info) -> int:
    """Write a network as a ``.sws`` file, atomically; return its size in bytes.

    The one writer of the project: ``sws.compress``, the CLI, the search, the accuracy
    budget (which counts the bytes it would write) and the baselines all write through it.
    Arguments as ``encode_module``'s.  Before anything is written the bytes are decoded and every
    tensor compared with the network's (a quantised one by value, the others bit for bit), so the
    network scored before saving is the one the file gives back; a difference raises
    ``RoundTripError`` and leaves ``path`` as it was.
    """
    blob = encode_module(model, codebook=codebook, quantized=quantized, name=name, **info)
    _check_round_trip(path, blob, model)
    atomic_write(Path(path), blob)
    return len(blob)


def _check_round_trip(path, blob: bytes, model) -> None:
    """Raise ``RoundTripError`` unless ``blob`` decodes to every tensor of ``model``."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    d = container.decode(blob, max_elements=max(sum(t.numel() for t in state.values()), 1))
    got = _expand_aliases(path, d.header["model"], d.tensors)
    aliases = d.header["model"].get("aliases", {})
    sparse = {h["name"] for h in d.header["tensors"] if h["coding"] != "raw"}
    for name, want in state.items():
        want, have = want.detach().cpu().reshape(-1), got[name].reshape(-1) if name in got else None
        if have is None or have.numel() != want.numel():
            where = "missing or of another size"
        elif aliases.get(name, name) in sparse:         # codebook values: +0.0 for -0.0
            where = _first_difference(want, have, want.double() != have.double())
        elif have.dtype != want.dtype:
            where = f"{want.dtype} written, {have.dtype} read back"
        else:                                           # raw: bit for bit
            differs = (want.contiguous().view(torch.uint8) != have.contiguous().view(torch.uint8))
            where = _first_difference(want, have, differs.view(-1, want.element_size()).any(1))
        if where:
            raise RoundTripError(f"{path}: the encoded file would not give back tensor {name!r} ({where}); "
                                 "nothing was written (a bug in sws's coder: please report it with the network)")


def _first_difference(want, have, differs) -> str:
    i = differs.nonzero()
    return f"index {int(i[0])}: {want[int(i[0])].item()} written, {have[int(i[0])].item()} read back" if len(i) else ""


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

"""Lossless pruning after snapping: zero the weights of units that cannot change the output.

A unit whose incoming weights and bias are all 0 outputs exactly 0, so through modules that
map 0 to 0 the weights reading it can go; a unit nobody reads can lose its incoming weights
(and bias).  Only layouts that can be proven are touched, and the result proves itself:

* **Which layers.** Two weighted layers (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``, exact
  types, no hooks, parametrisations or weights shared with another module) of one
  ``nn.Sequential``, joined only by modules whose effect on the first layer's units is
  known: element-wise functions (those that keep 0 at 0 carry both rules, the others only
  "nobody reads it"), per-channel pooling and batch-norm (on a channel axis only; batch-norm
  does not keep 0 at 0) and ``nn.Flatten``.  Anything else ends the chain, and layers
  outside a proven pair are never touched.
* **Which weights read a unit.** Tracked as an axis through the chain: a ``Linear``'s units
  are its output's last axis (whatever the input's rank: a ``Linear`` on 3-D input puts them
  last, so a ``Flatten`` after it interleaves them), a convolution's its channel axis;
  ``Flatten`` merges axes, and unit u then owns the merged positions i with
  ``(i // stride) % units == u``.  The next layer must read exactly that axis; grouped and
  depthwise convolutions read channel ``group * in_per_group + j`` in column j.  Where the
  rank matters (``Flatten``, ``BatchNorm1d``) it comes from a probe batch's shapes; without
  one those links are not made.
* **Checked on a probe batch.** The network runs (eval mode, no gradients, its own random
  generator) on ``example_input`` or an input inferred from the first layer (``Linear``:
  ``(4, in_features)``; a convolution: 28, 32, 64, 16, 8 or 224 pixels a side, the first
  size that runs), before and after; outputs that are not equal element for element undo
  everything, and the function returns 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["drop_dead_units"]

_WEIGHTED = {nn.Linear: 0, nn.Conv1d: 1, nn.Conv2d: 2}    # type: spatial dims
# element-wise, 0 -> 0: a unit that is 0 stays 0 (Hardtanh only when 0 lies in its range)
_KEEP_ZERO = {nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.ELU, nn.GELU, nn.SiLU, nn.Dropout,
              nn.Identity, nn.Hardtanh}
# element-wise but 0 -> not 0: only "nobody reads it" passes through
_ELEMENTWISE = {nn.Sigmoid, nn.Softplus, nn.Hardsigmoid}
# per channel over the last k axes, 0 -> 0
_POOLS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
          nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveMaxPool1d: 1,
          nn.AdaptiveMaxPool2d: 2, nn.Dropout1d: 1, nn.Dropout2d: 2}
_PROBE_SIDES = (28, 32, 64, 16, 8, 224)


class _Units:
    """Where the units of ``layer`` lie in the running activation: along axis ``axis``
    (negative, from the end) of length ``length``, unit u at the positions i with
    ``(i // stride) % n == u``; ``keep_zero``: whether a unit that is 0 still reads 0."""

    def __init__(self, layer: nn.Module):
        self.layer, self.n = layer, layer.weight.shape[0]
        self.axis = -1 - _WEIGHTED[type(layer)]
        self.length, self.stride, self.keep_zero = self.n, 1, True


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "parametrizations", None))


def _plain_layer(m: nn.Module, shared: set) -> bool:
    return (type(m) in _WEIGHTED and not _hooked(m) and id(m.weight) not in shared
            and (m.bias is None or id(m.bias) not in shared) and m.weight.dim() >= 2)


def _shared(model: nn.Sequential) -> set:
    """ids of parameters reachable from more than one place (tied, or a module used twice)."""
    seen, shared = set(), set()
    for _, p in model.named_parameters(remove_duplicate=False):
        (shared if id(p) in seen else seen).add(id(p))
    counts = {}
    for m in model:
        counts[id(m)] = counts.get(id(m), 0) + 1
    for m in model:
        if counts[id(m)] > 1:
            shared.update(id(p) for p in m.parameters())
    return shared


def _through(m: nn.Module, u: _Units, shape) -> bool:
    """Carry ``u`` through the module ``m`` (input shape ``shape`` or None); False: chain ends."""
    t = type(m)
    if _hooked(m):
        return False
    if t in _KEEP_ZERO:
        if t is nn.Hardtanh and not m.min_val <= 0 <= m.max_val:
            u.keep_zero = False
        return True
    if t in _ELEMENTWISE:
        u.keep_zero = False
        return True
    if t in _POOLS:
        return u.axis == -1 - _POOLS[t] and u.stride == 1 and not getattr(m, "return_indices", False)
    if t in (nn.BatchNorm1d, nn.BatchNorm2d):
        if t is nn.BatchNorm2d:
            axis = -3
        elif shape is not None and len(shape) in (2, 3):
            axis = 1 - len(shape)
        else:
            return False
        u.keep_zero = False
        return u.axis == axis and u.stride == 1 and m.num_features == u.length
    if t is nn.Flatten and shape is not None:
        r = len(shape)
        s, e = m.start_dim % r, m.end_dim % r
        p = r + u.axis
        if not 0 <= p < r or shape[p] != u.length or s > e:
            return False
        r_new = r - (e - s)
        if p < s:
            u.axis = p - r_new
        elif s <= p <= e:
            u.stride *= math.prod(shape[p + 1:e + 1])
            u.length = math.prod(shape[s:e + 1])
            u.axis = s - r_new
        return True
    return False


def _links(model: nn.Sequential, shapes) -> list[tuple[_Units, nn.Module]]:
    """(units of a layer, the next layer reading them) for every provable pair."""
    shared, links, u = _shared(model), [], None
    for i, m in enumerate(model):
        if type(m) in _WEIGHTED:
            if u is not None and _plain_layer(m, shared) and _reads(u, m):
                links.append((u, m))
            u = _Units(m) if _plain_layer(m, shared) else None
        elif u is not None and not _through(m, u, shapes[i] if shapes else None):
            u = None
    return links


def _reads(u: _Units, b: nn.Module) -> bool:
    """Whether layer ``b`` reads exactly the axis holding ``u``'s units."""
    k = _WEIGHTED[type(b)]
    if k == 0:
        return u.axis == -1 and b.in_features == u.length
    return u.axis == -1 - k and u.stride == 1 and b.in_channels == u.length == u.n


def _read_by(u: _Units, b: nn.Module) -> torch.Tensor:
    """Bool per unit of ``u``: some non-zero weight of ``b`` reads it."""
    nz = b.weight.ne(0)
    if _WEIGHTED[type(b)] == 0:
        cols = nz.any(0)                                        # (in_features,)
        return cols.reshape(-1, u.n, u.stride).any(2).any(0)
    g = b.groups
    per = nz.flatten(2).any(2)                                  # (out, in / groups)
    return per.reshape(g, b.out_channels // g, -1).any(1).reshape(-1)


def _zero_reading(u: _Units, b: nn.Module, silent: torch.Tensor) -> int:
    """Zero the weights of ``b`` that read a unit in ``silent``; return how many were non-zero."""
    w = b.weight
    if _WEIGHTED[type(b)] == 0:
        i = torch.arange(w.shape[1], device=w.device)
        mask = silent[(i // u.stride) % u.n]                    # per column
        n = int(w[:, mask].ne(0).sum())
        if n:
            w[:, mask] = 0
        return n
    g = b.groups
    rows = torch.arange(w.shape[0], device=w.device) // (b.out_channels // g)
    mask = silent.reshape(g, -1)[rows]                          # (out, in / groups)
    n = int(w[mask].ne(0).sum())
    if n:
        w[mask] = 0
    return n


def _silent(a: nn.Module) -> torch.Tensor:
    out = a.weight.reshape(a.weight.shape[0], -1).ne(0).any(1).logical_not()
    return out & a.bias.eq(0) if a.bias is not None else out


def _zero_units(a: nn.Module, units: torch.Tensor) -> int:
    n = int(a.weight[units].ne(0).sum())
    if a.bias is not None:
        n += int(a.bias[units].ne(0).sum())
    if n:
        a.weight[units] = 0
        if a.bias is not None:
            a.bias[units] = 0
    return n


def _run(model: nn.Module, x):
    """The model's output on ``x`` and each top-level module's input shape, in eval mode with
    no gradients; every module's training flag is put back."""
    modes = [(m, m.training) for m in model.modules()]
    shapes = [None] * len(model)

    def record(i):
        def hook(_, args):
            if len(args) == 1 and isinstance(args[0], torch.Tensor):
                shapes[i] = tuple(args[0].shape)
        return hook
    handles = [m.register_forward_pre_hook(record(i)) for i, m in enumerate(model)]
    try:
        model.eval()
        with torch.no_grad():
            out = model(*x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return out, shapes


def _probe(model: nn.Sequential, example_input):
    """(inputs, output, shapes) of a probe run, or None when no input can be built."""
    params = list(model.parameters())
    if not params:
        return None
    if example_input is not None:
        candidates = [example_input if isinstance(example_input, tuple) else (example_input,)]
    else:
        first = next((m for m in model if type(m) in _WEIGHTED), None)
        if first is None:
            return None
        gen = torch.Generator().manual_seed(0)
        k = _WEIGHTED[type(first)]
        sizes = [(4, first.in_features)] if k == 0 else \
            [(4, first.in_channels) + (s,) * k for s in _PROBE_SIDES]
        dev, dtype = params[0].device, params[0].dtype
        candidates = [(torch.randn(size, generator=gen).to(dev, dtype),) for size in sizes]
    for x in candidates:
        try:
            out, shapes = _run(model, x)
        except Exception:   # noqa: BLE001 - any failure: this input does not fit the model
            continue
        return x, _detach(out), shapes
    return None


def _detach(out):
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_detach(o) for o in out)
    if isinstance(out, dict):
        return {k: _detach(v) for k, v in out.items()}
    return out


def _same(a, b) -> bool:
    """Outputs equal element for element (NaN where NaN was)."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and bool(((a == b) | (a.isnan() & b.isnan())).all()))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@torch.no_grad()
def drop_dead_units(model: nn.Module, *, example_input=None) -> int:
    """Zero the weights that cannot change the output: those reading a unit whose incoming
    weights and bias are all 0 (it outputs exactly 0), and those entering a unit (with its
    bias) that no non-zero weight reads; repeated until nothing changes.

    Only pairs of layers in an ``nn.Sequential`` whose layout is proven are touched (see the
    module's documentation); every other module is left as it is.  The outputs on a probe
    batch (``example_input``, or one inferred from the first layer) must come out equal,
    else every change is undone.

    Args:
      model: the network, changed in place.
      example_input: a tensor (or tuple of the forward's arguments) the model runs on.

    Returns:
      the number of non-zero weights (biases included) set to zero; 0 when nothing could be
      proven or the probe disagreed.
    """
    if not isinstance(model, nn.Sequential):
        return 0
    probe = _probe(model, example_input)
    links = _links(model, probe[2] if probe else None)
    if not links:
        return 0
    layers = {id(m): m for u, b in links for m in (u.layer, b)}
    saved = {(key, name): p.detach().clone() for key, m in layers.items()
             for name, p in m.named_parameters(recurse=False)}
    removed, changed = 0, True
    while changed:
        changed = False
        for u, b in links:
            if u.keep_zero:
                n = _zero_reading(u, b, _silent(u.layer))
                removed, changed = removed + n, changed or n > 0
            n = _zero_units(u.layer, _read_by(u, b).logical_not())
            removed, changed = removed + n, changed or n > 0
    if probe and removed:
        x, before, _ = probe
        after, _ = _run(model, x)
        if not _same(before, after):
            for (key, name), value in saved.items():
                getattr(layers[key], name).copy_(value)
            return 0
    return removed

"""Lossless pruning after snapping: zero the weights of units that cannot change the output.

A unit whose incoming weights and bias are all 0 outputs exactly 0 (through
zero-preserving modules), so the weights leaving it can go; a unit nobody reads
can lose its incoming weights.  Only layouts that can be proven are touched.
"""

from __future__ import annotations

import torch

__all__ = ["drop_dead_units"]


# between two weighted layers, these map a unit that is exactly 0 to exactly 0 (and touch no
# other unit's value): dropping what such a unit sends on changes nothing
_ZERO_PRESERVING = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.Tanh,
                    torch.nn.MaxPool1d, torch.nn.MaxPool2d, torch.nn.Flatten, torch.nn.Dropout,
                    torch.nn.Identity)
_WEIGHTED = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)


def _unit_links(model: torch.nn.Module):
    """(layer, next layer, inputs of the next layer per unit of the first) for every two weighted
    layers of an ``nn.Sequential`` joined only by zero-preserving modules."""
    if not isinstance(model, torch.nn.Sequential):
        return []
    links, prev, clean = [], None, False
    for m in model:
        if isinstance(m, _WEIGHTED):
            ok = getattr(m, "groups", 1) == 1
            if prev is not None and clean and ok:
                units = prev.weight.shape[0]
                fan = m.weight.shape[1]
                if fan % units == 0 and (fan == units or isinstance(m, torch.nn.Linear)):
                    links.append((prev, m, fan // units))   # Flatten: channel-major blocks
            prev, clean = (m, True) if ok else (None, False)
        elif not isinstance(m, _ZERO_PRESERVING):
            prev, clean = None, False
    return links


@torch.no_grad()
def drop_dead_units(model: torch.nn.Module) -> int:
    """Zero the weights that cannot change the output: those leaving a unit whose incoming
    weights and bias are all 0 (it outputs exactly 0), and those entering a unit (with its bias)
    whose outgoing weights are all 0 (nobody reads it); repeated until nothing changes.

    Lossless for ``nn.Sequential`` nets of Linear/Conv layers joined by ReLU, max-pooling,
    Flatten and the like (``_ZERO_PRESERVING``); other models are left alone.  Returns the
    number of non-zero weights (biases included) set to zero.
    """
    removed, changed = 0, True
    links = _unit_links(model)
    while changed:
        changed = False
        for a, b, block in links:
            rows = a.weight.reshape(a.weight.shape[0], -1)
            silent = rows.ne(0).sum(1).eq(0)
            if a.bias is not None:
                silent &= a.bias.eq(0)
            cols = b.weight.reshape(b.weight.shape[0], a.weight.shape[0], block, -1)
            n = int(cols[:, silent].ne(0).sum())
            if n:
                cols[:, silent] = 0
                removed, changed = removed + n, True
            unread = cols.ne(0).sum((0, 2, 3)).eq(0)
            n = int(rows[unread].ne(0).sum()) + (int(a.bias[unread].ne(0).sum()) if a.bias is not None else 0)
            if n:
                rows[unread] = 0
                if a.bias is not None:
                    a.bias[unread] = 0
                removed, changed = removed + n, True
    return removed

"""The prior on GPUs (and any device but the C kernel's): float32, fused, no host synchronisation.

For each weight tensor, in chunks of weights x components:

    d_ij  = w_i - mu_j,     l_ij = logc_j - lam_j d_ij^2 / 2         (float32)
    lse_i = logsumexp_j l_ij,   r_ij = exp(l_ij - lse_i)
    g_i   = sum_j r_ij lam_j d_ij            -> added to w.grad (times scale), in place
    log p = sum_i lse_i,  S0_j = sum_i r_ij,  S1_j = sum_i r_ij d_ij,  S2_j = sum_i r_ij d_ij^2
                                              (accumulated in float64)

Float32 is exact enough per weight (relative errors of about 1e-7 in log p
and g); only the sums over millions of weights need float64 accumulators.
Tensors of fewer than a million weights are concatenated (on their device) and
their gradients added back with one ``_foreach_add_``, so a network of many
small layers costs a few kernel launches, not a few per layer.
Where ``torch.compile`` works (a CUDA device with Triton), each chunk is one
compiled function: a row reduction over the components (lse, g, the gradient
update) and column reductions over the weights (the sums), two passes over the
chunk's weights with no weights x components tensor in memory.  Elsewhere the
same function runs eagerly on smaller chunks (memory O(chunk x J)); that is
the path the test suite checks on CPU.  Nothing here reads a value back to the
host: the sums stay on the device until the caller reads them.
"""

from __future__ import annotations

import math
import os

import torch

__all__ = ["stats", "compiled"]

_EAGER_CELLS = 1 << 20      # weights x components per chunk, eager
_COMPILED_CHUNK = 1 << 21   # weights per compiled call (bounds any buffer inductor keeps)
_SMALL = 1 << 20            # tensors below this many weights are evaluated together
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _chunk(x, grad, mu, lam, logc, scale):
    """One chunk: (sum log p, [S0, S1, S2]) in float64; ``grad`` (same shape as ``x``, or
    None) gets ``scale * dC/dw`` added in place (``scale``: a float, or a 0-d tensor so
    that a compiled chunk does not depend on its value)."""
    d = x.float()[:, None] - mu
    lj = logc - 0.5 * lam * d * d
    m = lj.amax(1, keepdim=True)
    e = torch.exp(lj - m)
    s = e.sum(1, keepdim=True)
    r = e / s
    lse = m.squeeze(1) + torch.log(s.squeeze(1))
    if grad is not None:
        g = (r * (lam * d)).sum(1)
        grad.add_((g * scale).to(grad.dtype))
    rd = r * d
    S = torch.cat([r.sum(0, dtype=torch.float64), rd.sum(0, dtype=torch.float64),
                   (rd * d).sum(0, dtype=torch.float64)])
    return lse.sum(dtype=torch.float64), S


_compiled = {}


def compiled(device: torch.device):
    """The chunk function for ``device``: ``torch.compile``d on CUDA when Triton is there,
    else the eager function.  ``SWS_FUSED_COMPILE=0`` never compiles, ``=all`` compiles on
    any device (the test suite checks the compiled function on the CPU that way)."""
    key = device.type
    if key not in _compiled:
        fn = None
        mode = os.environ.get("SWS_FUSED_COMPILE", "1")
        if mode == "all" or (mode != "0" and key == "cuda"):
            try:
                from torch.utils._triton import has_triton
                if mode == "all" or has_triton():
                    fn = torch.compile(_chunk, dynamic=True, fullgraph=True)
            except Exception:  # no inductor in this build of torch
                fn = None
        _compiled[key] = fn
    return _compiled[key]


def _run(fn, x, grad, mu, lam, logc, scale):
    global _compiled
    if fn is not None:
        try:
            return fn(x, grad, mu, lam, logc, scale)
        except Exception:  # compilation failed on this machine: eager from now on
            _compiled[x.device.type] = None
    return _chunk(x, grad, mu, lam, logc, scale)


def _groups(weights):
    """Indices of ``weights`` in evaluation groups: tensors of at least ``_SMALL`` weights
    alone, smaller ones on the same device and of the same dtype concatenated (fewer
    kernel launches; the copies are bounded by the small tensors' total)."""
    groups, pending, total = [], {}, {}
    for q, w in enumerate(weights):
        if w.numel() >= _SMALL:
            groups.append([q])
            continue
        key = (w.device, w.dtype)
        pending.setdefault(key, []).append(q)
        total[key] = total.get(key, 0) + w.numel()
        if total[key] >= _COMPILED_CHUNK:
            groups.append(pending.pop(key))
            total.pop(key)
    groups.extend(pending.values())
    return sorted(groups)


def stats(mu: torch.Tensor, gamma: torch.Tensor, log_pi: torch.Tensor, weights: list[torch.Tensor],
          grads: list[torch.Tensor] | None = None, scale: float = 1.0, new_grads: bool = False):
    """log p summed over ``weights`` and the sums S0, S1, S2, on ``mu``'s device.

    Args:
      mu, gamma, log_pi: the mixture (J each).
      weights: tensors on any device (each is evaluated on its own device; small ones
        on one device together).
      grads: optional tensors (one per weight tensor, same shapes, e.g. the
        weights' ``.grad``) that get ``scale * dC/dw`` added in place.
      new_grads: return dC/dw as new float32 tensors instead.
    Returns:
      (log p as a 0-d float64 tensor, the 3J float64 sums [S0, S1, S2], the new
      gradients or None).
    """
    J = mu.numel()
    with torch.no_grad():
        g64 = gamma.detach().double()
        mix = torch.stack([mu.detach().double(), g64.exp(),
                           log_pi.detach().double() + 0.5 * g64 - _HALF_LOG_2PI]).float()
        logp = torch.zeros((), dtype=torch.float64, device=mu.device)
        S = torch.zeros(3 * J, dtype=torch.float64, device=mu.device)
        made = [None] * len(weights) if new_grads else None
        cache = {}
        for group in _groups(weights):
            ws = [weights[q] for q in group]
            dev = ws[0].device
            if dev not in cache:
                cache[dev] = mix.to(dev)
            m, lam, logc = cache[dev]
            flat = ws[0].detach().reshape(-1) if len(ws) == 1 else torch.cat([w.detach().reshape(-1) for w in ws])
            if new_grads or (grads is not None and len(ws) > 1):
                g = torch.zeros(flat.shape, dtype=torch.float32, device=dev)
                scale_q = 1.0 if new_grads else scale
            else:
                g = grads[group[0]].view(-1) if grads is not None else None
                scale_q = scale
            fn = compiled(dev)
            if fn is not None:  # tau changes every step under a schedule: no recompilation for it
                scale_q = torch.full((), scale_q, dtype=torch.float32, device=dev)
            chunk = _COMPILED_CHUNK if fn is not None else max(1, _EAGER_CELLS // J)
            for start in range(0, flat.numel(), chunk):
                part = None if g is None else g[start:start + chunk]
                lp, s = _run(fn, flat[start:start + chunk], part, m, lam, logc, scale_q)
                logp += lp.to(mu.device)
                S += s.to(mu.device)
                fn = _compiled.get(dev.type) if fn is not None else None
            if len(ws) > 1 and g is not None:
                parts = [p.view(w.shape) for p, w in zip(g.split([w.numel() for w in ws]), ws)]
                if new_grads:
                    for q, p in zip(group, parts):
                        made[q] = p
                else:
                    targets = [grads[q] for q in group]
                    torch._foreach_add_(targets, [p.to(t.dtype) for p, t in zip(parts, targets)])
            elif new_grads:
                made[group[0]] = g.view(ws[0].shape)
    return logp, S, made

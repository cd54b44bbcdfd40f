"""The mixture prior's hot path: -log p(w) summed over many weights, with its gradient.

One call evaluates C = -sum_i log sum_j pi_j N(w_i | mu_j, 1/lambda_j) over all
weight tensors the prior covers and returns the closed-form gradients (SPEC
section 1):

    dC/dw_i       = sum_j r_ij lambda_j (w_i - mu_j)
    dC/dmu_j      = -lambda_j S1_j
    dC/dgamma_j   = -S0_j / 2 + lambda_j S2_j / 2          (gamma_j = log lambda_j)
    dC/dlog pi_j  = -S0_j

with responsibilities r_ij and S0_j = sum_i r_ij, S1_j = sum_i r_ij d_ij,
S2_j = sum_i r_ij d_ij^2, d_ij = w_i - mu_j.  Autograd over the J x N matrix of
log-densities costs about 17x a plain training step; this path makes one pass
over the weights in C (``_kernel.c``), skipping components whose responsibility
is below exp(-40) in the weight's neighbourhood.  Where the C module is not
built, an exact chunked PyTorch implementation gives the same numbers.
"""

from __future__ import annotations

import ctypes
import math

import torch

__all__ = ["Workspace", "mixture_nll", "mixture_nll_accumulate", "mixture_nll_reference",
           "kernel_available"]

_GRID_MIN, _GRID_MAX = 256, 32768  # cells in the table; building it costs about GRID x J
_MAX_COMPONENTS = 256  # the C kernel's scratch size
_CUT = 20.0  # components below exp(-CUT) relative responsibility are dropped (as in _kernel.c)

_f32p = ctypes.POINTER(ctypes.c_float)
_f64p = ctypes.POINTER(ctypes.c_double)


class _Table(ctypes.Structure):
    _fields_ = [("J", ctypes.c_int), ("G", ctypes.c_int), ("lo", ctypes.c_double),
                ("h", ctypes.c_double)] + [
        (name, ctypes.c_void_p) for name in
        ("mu", "lam", "logc", "ptr", "idx", "r", "r1", "r2", "cells", "L0", "mom", "mom2", "out2")
    ] + [("n_exact", ctypes.c_int64)]


def _load():
    try:
        from sws.prior import _kernel  # built by setup.py
    except ImportError:
        return None
    lib = ctypes.CDLL(_kernel.__file__)
    table_p = ctypes.POINTER(_Table)
    lib.sws_build.restype = None
    lib.sws_build.argtypes = [table_p, ctypes.c_double, ctypes.c_int]
    lib.sws_eval.restype = None
    lib.sws_eval.argtypes = [table_p, _f32p, ctypes.c_int64, _f32p, ctypes.c_int, ctypes.c_float,
                             _f64p, _f64p, ctypes.c_int]
    lib.sws_finish.restype = None
    lib.sws_finish.argtypes = [table_p, _f64p, _f64p]
    return lib


_LIB = _load()


def kernel_available() -> bool:
    """Whether the compiled C kernel is in use (else the PyTorch fallback)."""
    return _LIB is not None


def _ptr(t: torch.Tensor, kind):
    return ctypes.cast(t.data_ptr(), kind)


def _log_norm_const(gamma: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    return log_pi + 0.5 * gamma - 0.5 * math.log(2 * math.pi)


class Workspace:
    """State kept between calls of the C kernel: the grid's placement and size,
    the cells' active components, and buffers.  Pass one per prior to
    ``mixture_nll``.

    The active sets are recomputed every ``SETS_EVERY`` calls with a safety
    margin (the mixture moves slowly).  The grid follows the weights' range,
    and its size follows the mixture's sharpness: it doubles while more than
    ``EXACT_HIGH`` of the weights need the exact path and halves while fewer
    than ``EXACT_LOW`` do, so broad early mixtures get a cheap coarse table and
    sharp late ones a fine table.
    """

    SETS_EVERY = 8     # calls between recomputations of the active sets
    SETS_MARGIN = 4.0  # extra log-responsibility margin covering the mixture's drift meanwhile
    EXACT_HIGH, EXACT_LOW = 0.005, 0.0005  # the exact path costs ~20x the expansion

    def __init__(self):
        self.lo, self.hi = -1.0, 1.0
        self.G, self.J, self.bufs = 1024, None, None
        self.calls, self.n_exact, self.n_seen = 0, 0, 0

    def buffers(self, J: int):
        if self.J != J or self.bufs is None or self.bufs["ptr"].numel() != self.G + 1:
            self.J, G = J, self.G
            f64 = dict(dtype=torch.float64)
            self.bufs = {
                "ptr": torch.empty(G + 1, dtype=torch.int32),  # per-cell counts of active components
                "idx": torch.empty(G * J, dtype=torch.int32),
                **{k: torch.empty(G * J, **f64) for k in ("r", "r1", "r2")},
                "cells": torch.empty(G * 4, **f64),  # 32-byte cell_t
                "L0": torch.empty(G, **f64),
                "mom": torch.empty(G * 3, **f64),
                "mom2": torch.empty(G * 3, **f64),
                "out2": torch.zeros(1 + 3 * J, **f64),
            }
        return self.bufs

    def resize(self):
        """Adapt the grid size to the share of weights that took the exact path."""
        if self.n_seen:
            share = self.n_exact / self.n_seen
            if share > self.EXACT_HIGH and self.G < _GRID_MAX:
                self.G *= 2
            elif share < self.EXACT_LOW and self.G > _GRID_MIN:
                self.G //= 2
        self.n_exact = self.n_seen = 0

    def state_dict(self) -> dict:
        """Everything that carries over between calls, for bit-identical resumption.

        Scalars (call count, grid size and placement, exact-path counters) as
        plain numbers; the cached active sets (``ptr``, ``idx``) as tensors.
        """
        state = {"calls": self.calls, "G": self.G, "J": self.J, "lo": self.lo, "hi": self.hi,
                 "n_exact": self.n_exact, "n_seen": self.n_seen,
                 "grid": list(getattr(self, "grid", ())) or None}
        if self.bufs is not None:
            state["ptr"] = self.bufs["ptr"].clone()
            state["idx"] = self.bufs["idx"].clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned; the next call continues exactly where it left off."""
        self.calls, self.G, self.lo, self.hi = int(state["calls"]), int(state["G"]), state["lo"], state["hi"]
        self.n_exact, self.n_seen = int(state["n_exact"]), int(state["n_seen"])
        if state.get("grid") is not None:
            self.grid = tuple(state["grid"])
        self.J, self.bufs = None, None
        if state.get("J") is not None and "ptr" in state:
            bufs = self.buffers(int(state["J"]))
            if state["ptr"].shape != bufs["ptr"].shape or state["idx"].shape != bufs["idx"].shape:
                raise ValueError("workspace state does not match its grid size")
            bufs["ptr"].copy_(state["ptr"])
            bufs["idx"].copy_(state["idx"])


def _stats_c(mu, gamma, log_pi, weights, grads, ws, scale=1.0):
    """Run the C kernel.  ``grads``: None (value and statistics only), "new"
    (return dC/dw per tensor) or "accumulate" (add scale * dC/dw to each w.grad)."""
    J = mu.numel()
    with torch.no_grad():
        mu64, gamma64 = mu.detach().double().contiguous(), gamma.detach().double()
        lam64 = gamma64.exp().contiguous()
        logc64 = _log_norm_const(gamma64, log_pi.detach().double()).contiguous()
    new_sets = ws.calls % ws.SETS_EVERY == 0 or ws.J != J
    if new_sets:  # the grid moves only when the active sets are recomputed
        ws.resize()
        margin = 0.05 * (ws.hi - ws.lo) + 1e-6
        ws.grid = (ws.lo - margin, (ws.hi - ws.lo + 2 * margin) / ws.G)
    bufs = ws.buffers(J)
    ws.calls += 1
    table = _Table(J=J, G=ws.G, lo=ws.grid[0], h=ws.grid[1], mu=mu64.data_ptr(),
                   lam=lam64.data_ptr(), logc=logc64.data_ptr(),
                   **{k: v.data_ptr() for k, v in bufs.items()})
    tp = ctypes.byref(table)
    threads = 2 if torch.get_num_threads() > 1 else 1
    _LIB.sws_build(tp, _CUT + ws.SETS_MARGIN if new_sets else 0.0, threads)
    bufs["out2"].zero_()
    out = torch.zeros(1 + 3 * J, dtype=torch.float64)
    rng = torch.tensor([math.inf, -math.inf], dtype=torch.float64)
    new_grads = []
    for w in weights:
        if grads == "accumulate" and (w.dtype != torch.float32 or not w.is_contiguous()
                                      or w.device.type != "cpu"):
            raise ValueError("the fused prior gradient needs contiguous float32 CPU tensors")
        w_ = w.detach()
        if w_.dtype != torch.float32 or not w_.is_contiguous() or w_.device.type != "cpu":
            w_ = w_.to("cpu", torch.float32).contiguous()
        if grads == "accumulate":
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            g, acc = w.grad, 1
        else:
            g, acc = (torch.empty_like(w_) if grads == "new" else None), 0
        _LIB.sws_eval(tp, _ptr(w_, _f32p), w_.numel(), _ptr(g, _f32p) if g is not None else None,
                      acc, scale, _ptr(out, _f64p), _ptr(rng, _f64p), threads)
        new_grads.append(g if grads == "new" else None)
    _LIB.sws_finish(tp, _ptr(out, _f64p), _ptr(rng, _f64p))
    ws.n_exact += table.n_exact
    ws.n_seen += sum(w.numel() for w in weights)
    lo_seen, hi_seen = rng.tolist()
    if math.isfinite(lo_seen):
        ws.lo, ws.hi = lo_seen, hi_seen
    return out[0], out[1:1 + J], out[1 + J:1 + 2 * J], out[1 + 2 * J:], new_grads


def _stats_torch(mu, gamma, log_pi, weights, want_grad, chunk=1 << 16):
    """Exact dense evaluation in float64, chunked to bound memory, on the weights' device.

    Sums come back on ``mu``'s device; gradients on each weight's device.
    """
    mu64, gamma64 = mu.detach().double(), gamma.detach().double()
    lam, logc = gamma64.exp(), _log_norm_const(gamma64, log_pi.detach().double())
    J = mu.numel()
    logp = torch.zeros((), dtype=torch.float64, device=mu.device)
    S0, S1, S2 = (torch.zeros(J, dtype=torch.float64, device=mu.device) for _ in range(3))
    grads = []
    for w in weights:
        dev = w.device
        m, lm, lc = mu64.to(dev), lam.to(dev), logc.to(dev)
        flat = w.detach().reshape(-1)
        parts = []
        for start in range(0, flat.numel(), chunk):
            d = flat[start:start + chunk, None].double() - m
            lj = lc - 0.5 * lm * d * d
            lse = torch.logsumexp(lj, dim=1, keepdim=True)
            r = (lj - lse).exp()
            logp += lse.sum().to(mu.device)
            S0 += r.sum(0).to(mu.device)
            S1 += (r * d).sum(0).to(mu.device)
            S2 += (r * d * d).sum(0).to(mu.device)
            if want_grad:
                parts.append((r * lm * d).sum(1))
        if want_grad:
            g = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float64)
            grads.append(g.to(w.dtype).reshape(w.shape))
        else:
            grads.append(None)
    return logp, S0, S1, S2, grads


def _kernel_takes(weights) -> bool:
    return kernel_available() and all(
        w.dtype == torch.float32 and w.is_contiguous() and w.device.type == "cpu" for w in weights)


class _MixtureNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ws, use_c, mu, gamma, log_pi, *weights):
        want = [w.requires_grad for w in weights]
        if use_c:
            logp, S0, S1, S2, grads = _stats_c(mu, gamma, log_pi, weights,
                                               "new" if any(want) else None, ws)
        else:
            logp, S0, S1, S2, grads = _stats_torch(mu, gamma, log_pi, weights, any(want))
        lam = gamma.detach().double().exp()
        ctx.param_grads = [(-lam * S1).to(mu.dtype), (0.5 * lam * S2 - 0.5 * S0).to(gamma.dtype),
                           (-S0).to(log_pi.dtype)]
        ctx.weight_grads = [g if needed else None for g, needed in zip(grads, want)]
        return (-logp).to(mu.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        params = [grad_out * g for g in ctx.param_grads]
        weights = [None if g is None else (g.mul_(grad_out) if g.dtype == grad_out.dtype
                                           else g * grad_out) for g in ctx.weight_grads]
        ctx.weight_grads = None
        return (None, None, *params, *weights)


def mixture_nll(mu: torch.Tensor, gamma: torch.Tensor, log_pi: torch.Tensor,
                weights: list[torch.Tensor], workspace: Workspace | None = None,
                use_kernel: bool | None = None) -> torch.Tensor:
    """C = -sum_i log sum_j pi_j N(w_i | mu_j, exp(-gamma_j)) over all tensors in ``weights``.

    Differentiable with respect to ``mu``, ``gamma`` (log-precisions), ``log_pi``
    and every weight tensor; the gradients are the closed forms above.

    Args:
      mu, gamma, log_pi: the J component means, log-precisions, log mixing proportions.
      weights: tensors whose entries the prior covers (any shapes).
      workspace: optional state reused across steps (the grid follows the
        weights' range, buffers are allocated once).
      use_kernel: force the C kernel (True) or the PyTorch path (False);
        default: the C kernel where built.
    Returns:
      A scalar tensor.
    """
    if mu.numel() > _MAX_COMPONENTS:
        raise ValueError(f"at most {_MAX_COMPONENTS} mixture components are supported")
    use_c = kernel_available() if use_kernel is None else use_kernel
    if use_c and not kernel_available():
        raise RuntimeError("the C kernel sws.prior._kernel is not built; reinstall the package")
    return _MixtureNLL.apply(workspace or Workspace(), use_c, mu, gamma, log_pi, *weights)


def mixture_nll_accumulate(mu: torch.Tensor, gamma: torch.Tensor, log_pi: torch.Tensor,
                           weights: list[torch.Tensor], scale: float,
                           workspace: Workspace | None = None):
    """Fused form for training loops: add ``scale * dC/dw`` to every ``w.grad`` in place.

    Equivalent to ``(scale * mixture_nll(...)).backward()`` for the weights, but
    with no J x N autograd graph: contiguous float32 CPU tensors take one pass
    of the C kernel; others (GPU, float64, or no C kernel built) the exact dense
    path on their own device.  A missing ``.grad`` is created as zeros.

    Returns:
      (C, dC/dmu, dC/dgamma, dC/dlog_pi) as float64 tensors on ``mu``'s device
      (unscaled), for the caller to back-propagate into the mixture's parameters.
    """
    if not _kernel_takes(weights):
        C, d_mu, d_gamma, d_logpi, grads = _stats_torch_grads(mu, gamma, log_pi, weights)
        with torch.no_grad():
            for w, g in zip(weights, grads):
                if w.grad is None:
                    w.grad = torch.zeros_like(w)
                w.grad.add_(g.to(w.grad.dtype), alpha=scale)
        return C, d_mu, d_gamma, d_logpi
    logp, S0, S1, S2, _ = _stats_c(mu, gamma, log_pi, weights, "accumulate",
                                   workspace or Workspace(), scale)
    lam = gamma.detach().double().exp()
    return -logp, -lam * S1, 0.5 * lam * S2 - 0.5 * S0, -S0


def _stats_torch_grads(mu, gamma, log_pi, weights):
    logp, S0, S1, S2, grads = _stats_torch(mu, gamma, log_pi, weights, True)
    lam = gamma.detach().double().exp()
    return -logp, -lam * S1, 0.5 * lam * S2 - 0.5 * S0, -S0, grads


def mixture_nll_reference(mu, gamma, log_pi, weights) -> torch.Tensor:
    """Plain autograd over the full J x N matrix (the slow path), for tests and timing."""
    x = torch.cat([w.reshape(-1) for w in weights])[:, None]
    lj = log_pi + 0.5 * gamma - 0.5 * math.log(2 * math.pi) - 0.5 * gamma.exp() * (x - mu) ** 2
    return -torch.logsumexp(lj, dim=1).sum()

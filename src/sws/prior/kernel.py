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
log-densities costs about 17x a plain training step.  Three paths avoid it:

- CPU, float32 (the C kernel ``_kernel.c``): one pass over the weights, on an
  adaptive piecewise-cubic expansion of log p (exact where one component is
  active); to within 1e-4 of the exact sums, deterministic for given inputs
  and thread count.
- Other devices (``sws.prior.fused``): the dense formulas in float32 with
  float64 sums, two passes per tensor, compiled with ``torch.compile`` where
  it works; no host synchronisation.
- Otherwise (no C kernel built, float64 weights): exact dense float64 in
  chunks on the weights' device.

``prior_backward`` is the training loop's form: it adds ``scale * dC/dp`` to
the gradients of the weights and of the mixture's parameters in place and
returns C as a 0-d tensor on the prior's device.
"""

from __future__ import annotations

import ctypes
import math

import torch

from sws.prior import fused

__all__ = ["Workspace", "mixture_nll", "mixture_nll_accumulate", "mixture_nll_reference",
           "kernel_available", "prior_backward", "snap_swap_"]

_MAX_COMPONENTS = 256  # the C kernel's scratch size
_CUT = 20.0  # components below exp(-CUT) relative responsibility are dropped (as in _kernel.c)
_MIN_PARALLEL = 1 << 15  # weights below which the C kernel's second thread does not pay
_COARSE_MIN, _COARSE_MAX = 32, 1024  # coarse cells of the C kernel's grid

_vp = ctypes.c_void_p
_f64p = ctypes.POINTER(ctypes.c_double)
_i64p = ctypes.POINTER(ctypes.c_int64)


def _load():
    try:
        from sws.prior import _kernel  # built by setup.py
    except ImportError:
        return None
    try:
        lib = ctypes.CDLL(_kernel.__file__)
        sigs = {
            "sws_new": (_vp, []),
            "sws_free": (None, [_vp]),
            "sws_plan": (ctypes.c_int, [_vp, ctypes.c_int, _vp, _vp, _vp, ctypes.c_double,
                                        ctypes.c_double, ctypes.c_int, ctypes.c_double]),
            "sws_eval": (ctypes.c_int, [_vp, ctypes.c_int, _vp, _vp, _vp, ctypes.c_int, _vp, _vp, _vp,
                                        ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_int64,
                                        _vp, _vp]),
            "sws_shape": (None, [_vp, _i64p, _f64p]),
            "sws_export": (None, [_vp, _vp, _vp]),
            "sws_import": (ctypes.c_int, [_vp, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                          ctypes.c_int, ctypes.c_double, ctypes.c_double, _vp, _vp]),
            "sws_mixture": (None, [ctypes.c_int, _vp, _vp, _vp, ctypes.c_double, _vp, _vp, _vp, _vp]),
            "sws_plan_range": (ctypes.c_int, [_vp, ctypes.c_int, _vp, _vp, _vp, ctypes.c_double, ctypes.c_double,
                                              ctypes.c_double]),
            "sws_train_step": (ctypes.c_double, [_vp, ctypes.c_int, _vp, _vp, _vp, _vp, ctypes.c_int,
                                                 ctypes.c_double, ctypes.c_double, _vp, _vp, ctypes.c_int, _vp,
                                                 _vp, _vp, ctypes.c_float, ctypes.c_int, ctypes.c_int64,
                                                 ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_double,
                                                 _vp, _vp, _vp, _vp, ctypes.c_int, _vp, _vp, _vp, _vp,
                                                 ctypes.c_double]),
        }
        for name, (res, args) in sigs.items():
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
    except (OSError, AttributeError):  # an extension from another version of this file
        return None
    if hasattr(lib, "sws_snap"):   # an older build lacks only the snap: the prior still runs in C
        lib.sws_snap.restype = None
        lib.sws_snap.argtypes = [_vp, _vp, ctypes.c_int64, _vp, ctypes.c_int, _vp]
    if hasattr(lib, "sws_hot"):    # whether the last call took the hot path (tests)
        lib.sws_hot.restype, lib.sws_hot.argtypes = ctypes.c_int, [_vp]
    if hasattr(lib, "sws_check_builds"):   # the leaves built eight at a time against one (tests)
        lib.sws_check_builds.restype, lib.sws_check_builds.argtypes = ctypes.c_int64, [_vp, _vp, _vp, _vp]
    return lib


_LIB = _load()


def _load_ext():
    """The extension module itself where it has the bound training step (``train_step``)."""
    if _LIB is None:
        return None
    from sws.prior import _kernel
    return _kernel if hasattr(_kernel, "train_step") and hasattr(_kernel, "bind") else None


_EXT = _load_ext()
_OWN = _LIB   # the fast call only while the prior runs on this library (benchmarks swap in others)


def kernel_available() -> bool:
    """Whether the compiled C kernel is in use (else the PyTorch fallback)."""
    return _LIB is not None


def snap_swap_(w: torch.Tensor, saved: torch.Tensor, edges: torch.Tensor, values: torch.Tensor) -> bool:
    """``saved.copy_(w)``, then each element of ``w`` to ``values[bucketize(w, edges)]``, in one C
    pass (``sws.method.snap``); False, with nothing done, where the C kernel cannot take it
    (not built, another device, dtype or layout): the caller does it in PyTorch."""
    if (_LIB is None or not hasattr(_LIB, "sws_snap") or w.device.type != "cpu" or w.dtype != torch.float32
            or not w.is_contiguous() or saved.dtype != torch.float32 or not saved.is_contiguous()
            or saved.shape != w.shape or saved.device.type != "cpu"):
        return False
    e = edges.to(torch.float32).contiguous()
    v = values.to(torch.float32).contiguous()
    if e.device.type != "cpu" or v.device.type != "cpu" or v.numel() != e.numel() + 1:
        return False
    _LIB.sws_snap(w.data_ptr(), saved.data_ptr(), w.numel(), e.data_ptr(), e.numel(), v.data_ptr())
    return True


def _log_norm_const(gamma: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
    return log_pi + 0.5 * gamma - 0.5 * math.log(2 * math.pi)


def _threads() -> int:
    return 2 if torch.get_num_threads() > 1 else 1


class Workspace:
    """State the C kernel keeps between calls: its geometry (a coarse grid over the
    weights' range, each cell split into leaves fine enough for the mixture there,
    each leaf's active components) and the range of the weights it saw.  Pass one
    per prior to ``mixture_nll``.

    The geometry is planned again every ``SETS_EVERY`` calls (the mixture moves
    slowly; the active sets keep a margin of ``SETS_MARGIN`` in log-responsibility
    and the leaves are planned finer than each call requires), and whenever the
    number of components changes.
    """

    SETS_EVERY = 8     # calls between plans
    SETS_MARGIN = 4.0  # extra log-responsibility margin covering the mixture's drift meanwhile
    VERSION = 2        # of the saved state (1: the uniform grid of the first kernel)

    def __init__(self):
        self.lo, self.hi = -1.0, 1.0   # the weights' range, as last seen
        self.calls, self.n_exact, self.n_seen, self.n_built = 0, 0, 0, 0
        self.J = None                  # components of the current plan
        self._handle = None
        self._bufs = self.out = None
        self.info = (ctypes.c_double * 5)()
        self.binding = None            # the training step's call, bound to its tensors (kernel._Binding)

    def __del__(self):
        if self._handle is not None and _LIB is not None:
            _LIB.sws_free(self._handle)
            self._handle = None

    # A copy (``copy.deepcopy`` of a prior, pickling, ``torch.save``) gets a workspace of its own
    # in the same state, never the C handle: two owners of one would free it twice.
    def __getstate__(self) -> dict:
        return self.state_dict()

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.load_state_dict(state)

    def __deepcopy__(self, memo) -> "Workspace":
        new = Workspace()
        new.load_state_dict({k: v.clone() if torch.is_tensor(v) else v for k, v in self.state_dict().items()})
        return new

    def handle(self):
        if self._handle is None:
            self._handle = _LIB.sws_new()
            if not self._handle:
                raise MemoryError("the prior's C kernel could not allocate its workspace")
        return self._handle

    def mixture_buffers(self, J: int) -> torch.Tensor:
        """A (4, J) float64 scratch: mu, lam, logc, log pi (and ``self.out``, 1 + 3J sums)."""
        if self._bufs is None or self._bufs.shape[1] != J:
            self._bufs = torch.zeros(4, J, dtype=torch.float64)
            self.out = torch.zeros(1 + 3 * J, dtype=torch.float64)
        return self._bufs

    def count_call(self, J: int) -> bool:
        """Count a call of the kernel; whether it plans the geometry first (every ``SETS_EVERY``
        calls, and when the number of components changed).  The training step's call from C
        (``train_step`` in ``_kernel.c``) makes the same decision on these attributes."""
        plan = self.calls % self.SETS_EVERY == 0 or self.J != J
        self.calls += 1
        return plan

    def plan(self, J: int, mu: torch.Tensor, lam: torch.Tensor, logc: torch.Tensor) -> None:
        """Plan the geometry for the mixture (float64 CPU tensors) over the weights' range."""
        rc = _LIB.sws_plan_range(self.handle(), J, mu.data_ptr(), lam.data_ptr(), logc.data_ptr(),
                                 self.lo, self.hi, _CUT + self.SETS_MARGIN)
        if rc != 0:
            raise MemoryError("the prior's C kernel ran out of memory planning its grid")
        self.J = J

    def state_dict(self) -> dict:
        """Everything that carries over between calls, for bit-identical resumption.

        Scalars (format version, call count, the weights' range, the geometry's
        sizes and placement, exact-path counters) as plain numbers; the geometry
        itself as two int32 tensors ``ptr`` and ``idx``.
        """
        state = {"version": self.VERSION, "calls": self.calls, "lo": self.lo, "hi": self.hi,
                 "n_exact": self.n_exact, "n_seen": self.n_seen, "J": self.J}
        if self.J is not None and self._handle is not None:
            sizes, place = (ctypes.c_int64 * 5)(), (ctypes.c_double * 2)()
            _LIB.sws_shape(self._handle, sizes, place)
            J, G, L, E, D = (int(v) for v in sizes)
            ptr = torch.empty(2 * (L + 1) + G, dtype=torch.int32)
            idx = torch.empty(max(E, 1), dtype=torch.int32)
            _LIB.sws_export(self._handle, ptr.data_ptr(), idx.data_ptr())
            state.update(G=G, D=D, L=L, E=E, grid_lo=place[0], grid_h=place[1], ptr=ptr,
                         idx=idx[:E].clone())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned; the next call continues exactly where it left off.

        A state saved by another version of the kernel restores only the call
        count and range (the next call plans afresh).
        """
        self.calls, self.lo, self.hi = int(state["calls"]), float(state["lo"]), float(state["hi"])
        self.n_exact, self.n_seen = int(state.get("n_exact", 0)), int(state.get("n_seen", 0))
        self.J = None
        if state.get("version") != self.VERSION or state.get("J") is None or "ptr" not in state:
            return
        if _LIB is None:
            return
        J, G, D, L, E = (int(state[k]) for k in ("J", "G", "D", "L", "E"))
        ptr = state["ptr"].to(torch.int32).contiguous()
        idx = state["idx"].to(torch.int32).contiguous()
        if ptr.numel() != 2 * (L + 1) + G or idx.numel() != E:
            raise ValueError("workspace state does not match its grid size")
        rc = _LIB.sws_import(self.handle(), J, G, D, L, E, float(state["grid_lo"]), float(state["grid_h"]),
                             ptr.data_ptr(), idx.data_ptr() if E else None)
        if rc != 0:
            raise ValueError("workspace state is inconsistent" if rc == -2 else "out of memory")
        self.J = J


_F32 = torch.float32


def _c_takes(tensors) -> bool:
    for t in tensors:
        if not (t.is_cpu and t.dtype is _F32 and t.is_contiguous()):
            return False
    return True


def _run_c(ws: Workspace, J: int, mix: torch.Tensor, weights, grads, mode: int, scale: float,
           out: torch.Tensor | None = None, ptrs=None) -> torch.Tensor:
    """The C kernel over ``weights`` for the mixture in ``mix[:3]`` (mu, lam, logc).

    mode 0: no gradient; 1: ``grads`` receive dC/dw; 2: get ``scale * dC/dw`` added.
    ``ptrs``: the ctypes arrays of the weights' addresses, sizes and the gradients'
    addresses, when the caller has them.  Returns the (1 + 3J) float64 sums: log p, S0,
    S1, S2 (in ``out`` when given).
    """
    if ws.count_call(J):
        ws.plan(J, mix[0], mix[1], mix[2])
    nt = len(weights)
    if ptrs is None:
        ptrs = ((_vp * nt)(*[w.data_ptr() for w in weights]), (ctypes.c_int64 * nt)(*[w.numel() for w in weights]),
                (_vp * nt)(*[g.data_ptr() for g in grads]) if mode else None)
    if out is None:
        out = torch.empty(1 + 3 * J, dtype=torch.float64)
    info = ws.info
    rc = _LIB.sws_eval(ws.handle(), J, mix[0].data_ptr(), mix[1].data_ptr(), mix[2].data_ptr(), nt,
                       ptrs[0], ptrs[1], ptrs[2], mode, scale, _threads(), _MIN_PARALLEL, out.data_ptr(), info)
    if rc != 0:
        raise RuntimeError("the prior's C kernel has no plan for this mixture")
    ws.n_exact += int(info[0])
    ws.n_built = int(info[3])
    ws.n_seen += sum(ptrs[1])
    lo, hi = info[1], info[2]
    if lo - lo == 0.0 and hi - hi == 0.0:  # finite
        ws.lo, ws.hi = lo, hi
    return out


def _mixture64(mu, gamma, log_pi) -> torch.Tensor:
    """(3, J) float64 CPU: mu, lam, logc from the mixture's tensors."""
    with torch.no_grad():
        g = gamma.detach().double().cpu()
        return torch.stack([mu.detach().double().cpu(), g.exp(),
                            _log_norm_const(g, log_pi.detach().double().cpu())]).contiguous()


def _stats_c(mu, gamma, log_pi, weights, want_grad, ws):
    """The C kernel on contiguous float32 CPU copies of ``weights``; new gradient tensors."""
    J = mu.numel()
    mix = _mixture64(mu, gamma, log_pi)
    ws_ = [w.detach().to("cpu", torch.float32).contiguous() for w in weights]
    grads = [torch.empty_like(w) for w in ws_] if want_grad else None
    out = _run_c(ws, J, mix, ws_, grads, 1 if want_grad else 0, 1.0)
    if grads is not None:
        grads = [g.to(w.device, w.dtype) if g.device != w.device or g.dtype != w.dtype else g
                 for g, w in zip(grads, weights)]
    else:
        grads = [None] * len(weights)
    return out[0], out[1:1 + J], out[1 + J:1 + 2 * J], out[1 + 2 * J:], grads


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


def _stats_fused(mu, gamma, log_pi, weights, want_grad):
    """The float32 path (``sws.prior.fused``), on the weights' device; sums on ``mu``'s device."""
    logp, S, grads = fused.stats(mu, gamma, log_pi, weights, grads=None, new_grads=want_grad)
    J = mu.numel()
    return logp, S[:J], S[J:2 * J], S[2 * J:], grads if want_grad else [None] * len(weights)


def _path(mu, weights, use_kernel) -> str:
    """Which implementation takes these tensors: "c", "fused" or "torch"."""
    on_cpu = mu.device.type == "cpu" and all(w.device.type == "cpu" for w in weights)
    if use_kernel:
        if not kernel_available():
            raise RuntimeError("the C kernel sws.prior._kernel is not built; reinstall the package")
        return "c"  # CPU copies of whatever is given; results back on the weights' devices
    if use_kernel is None and on_cpu and kernel_available():
        return "c"
    if use_kernel is None and not on_cpu and all(w.is_floating_point() and w.dtype != torch.float64
                                                 for w in weights):
        return "fused"
    return "torch"


class _MixtureNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ws, path, mu, gamma, log_pi, *weights):
        want = [w.requires_grad for w in weights]
        stats = {"c": lambda: _stats_c(mu, gamma, log_pi, weights, any(want), ws),
                 "fused": lambda: _stats_fused(mu, gamma, log_pi, weights, any(want)),
                 "torch": lambda: _stats_torch(mu, gamma, log_pi, weights, any(want))}[path]
        logp, S0, S1, S2, grads = stats()
        logp, S0, S1, S2 = (t.to(mu.device) for t in (logp, S0, S1, S2))
        lam = gamma.detach().double().exp()
        ctx.param_grads = [(-lam * S1).to(mu.dtype), (0.5 * lam * S2 - 0.5 * S0).to(gamma.dtype),
                           (-S0).to(log_pi.dtype)]
        ctx.weight_grads = [g if needed else None for g, needed in zip(grads, want)]
        return (-logp).to(mu.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        params = [grad_out * g for g in ctx.param_grads]
        weights = [None if g is None else (g.mul_(grad_out.to(g.device)) if g.dtype == grad_out.dtype
                                           else g * grad_out.to(g.device)) for g in ctx.weight_grads]
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
      weights: tensors whose entries the prior covers (any shapes, any device).
      workspace: optional state reused across steps by the C kernel.
      use_kernel: True: the C kernel (on CPU copies of the tensors); False: the
        exact float64 PyTorch path; default: the C kernel for CPU tensors where
        built, the float32 fused path for tensors on other devices, else the
        exact path.
    Returns:
      A scalar tensor on ``mu``'s device.
    """
    if mu.numel() > _MAX_COMPONENTS:
        raise ValueError(f"at most {_MAX_COMPONENTS} mixture components are supported")
    path = _path(mu, weights, use_kernel)
    return _MixtureNLL.apply(workspace or Workspace(), path, mu, gamma, log_pi, *weights)


def mixture_nll_accumulate(mu: torch.Tensor, gamma: torch.Tensor, log_pi: torch.Tensor,
                           weights: list[torch.Tensor], scale: float,
                           workspace: Workspace | None = None):
    """Fused form for training loops: add ``scale * dC/dw`` to every ``w.grad`` in place.

    Equivalent to ``(scale * mixture_nll(...)).backward()`` for the weights, but
    with no J x N autograd graph.  A missing ``.grad`` is created as zeros.

    Returns:
      (C, dC/dmu, dC/dgamma, dC/dlog_pi) as float64 tensors on ``mu``'s device
      (unscaled), for the caller to back-propagate into the mixture's parameters.
    """
    for w in weights:
        _ensure_grad(w)
    path = _path(mu, weights, None)
    J = mu.numel()
    if path == "c" and _c_takes(weights) and _c_takes([w.grad for w in weights]):
        out = _run_c(workspace or Workspace(), J, _mixture64(mu, gamma, log_pi), weights,
                     [w.grad for w in weights], 2, scale)
        logp, S0, S1, S2 = out[0], out[1:1 + J], out[1 + J:1 + 2 * J], out[1 + 2 * J:]
    elif path == "fused":
        logp, S, _ = fused.stats(mu, gamma, log_pi, weights, grads=[w.grad for w in weights], scale=scale)
        S0, S1, S2 = S[:J], S[J:2 * J], S[2 * J:]
    else:
        logp, S0, S1, S2, grads = (_stats_c(mu, gamma, log_pi, weights, True, workspace or Workspace())
                                   if path == "c" else _stats_torch(mu, gamma, log_pi, weights, True))
        with torch.no_grad():
            for w, g in zip(weights, grads):
                w.grad.add_(g.to(w.grad.device, w.grad.dtype), alpha=scale)
    logp, S0, S1, S2 = (t.to(mu.device) for t in (logp, S0, S1, S2))
    lam = gamma.detach().double().exp()
    return -logp, -lam * S1, 0.5 * lam * S2 - 0.5 * S0, -S0


def _ensure_grad(p: torch.Tensor) -> torch.Tensor:
    """``p.grad``, created as zeros if missing, made dense if sparse (``nn.Embedding(sparse=True)``:
    the prior's gradient reaches every weight)."""
    g = p.grad
    if g is None:
        g = p.grad = torch.zeros_like(p)
    elif g.layout is not torch.strided:
        g = p.grad = g.to_dense()
    return g


def prior_backward(prior, weights: list[torch.Tensor], scale: float, acc: torch.Tensor | None = None,
                   factor: float = 1.0):
    """Add ``scale * dC/dp`` to the ``.grad`` of ``weights`` and of ``prior``'s parameters.

    ``prior`` is a ``GaussianMixturePrior``; C = -log p(weights) + hyper-prior.
    Float32 CPU tensors take one call of the C kernel (the mixture's gradients
    included); tensors on other devices the fused float32 path, with the
    mixture's gradients in closed form on its device; anything else the exact
    float64 path.  No host synchronisation on any device.

    Returns:
      C, a 0-d float64 tensor on the prior's device; with ``acc`` (a float64 tensor
      of one element on the prior's device, the training loop's running sum),
      ``C * factor`` is added to it instead and C is returned as a Python float (C
      kernel) or that 0-d tensor.
    """
    ws = prior.__dict__.get("_workspace")
    b = ws.binding if ws is not None else None
    if b is not None and b.capsule is not None and _LIB is _OWN:   # the training loop's call, in C
        C = _EXT.train_step(b.capsule, prior, weights, scale, acc, factor)
        if C is not None:
            return C if acc is not None else torch.scalar_tensor(C, dtype=torch.float64)
    tensors = _tensors_of(prior)
    if _LIB is not None:
        C = _prior_backward_c(prior, tensors, weights, scale, acc, factor)
        if C is not None:
            return C
    means, log_precisions, mixing_logits, pi0_logit, alpha, beta = tensors
    params = [means, log_precisions, mixing_logits]
    learn_pi0 = isinstance(pi0_logit, torch.nn.Parameter)
    if learn_pi0:
        params.append(pi0_logit)
    if log_precisions.numel() > _MAX_COMPONENTS:
        raise ValueError(f"at most {_MAX_COMPONENTS} mixture components are supported")
    for w in weights:
        _ensure_grad(w)
    p_grads = [_ensure_grad(p) if p.requires_grad else None for p in params]
    mu, gamma, log_pi = prior.mixture()
    accumulated = mixture_nll_accumulate(mu, gamma, log_pi, weights, scale, prior._workspace)
    C = _mixture_backward_torch(prior, accumulated, scale, params, p_grads, learn_pi0)
    if acc is not None:
        acc += C * factor
    return C


_NAMES = ("means", "log_precisions", "mixing_logits", "pi0_logit", "alpha", "beta")


def _tensors_of(prior) -> list:
    """The prior's parameters and buffers by name, from the module's own dicts (attribute access
    through ``nn.Module.__getattr__`` costs about 0.3 us each, ten times a step)."""
    params, buffers = prior.__dict__.get("_parameters", {}), prior.__dict__.get("_buffers", {})
    found = [params.get(n, buffers.get(n)) for n in _NAMES]
    if any(t is None for t in found):  # not plain parameters and buffers (a subclass, a parametrisation)
        found = [getattr(prior, n) for n in _NAMES]
    return found


class _Binding:
    """The C kernel's training-step call bound to one prior's tensors and one list of weights.

    Made once (``make``: everything checked, the ctypes arrays of the weights' addresses
    and sizes built, the mixture's gradient buffers allocated); at every later call
    ``fits`` checks by identity and address that the tensors are still those it was made
    for, so that a step costs a few dozen attribute reads from Python (after the forward
    and backward passes each costs several times what it does in a warm loop).  A
    parameter of the mixture whose ``.grad`` is None (the optimiser's ``zero_grad`` sets
    it so) gets its buffer here back, set by the kernel rather than added to.
    """

    __slots__ = ("tensors", "ptrs", "weights", "w_ptrs", "nt", "n_total", "w_arr", "n_arr", "g_arr",
                 "learn", "grads", "learn_pi0", "J", "mix", "out", "acc", "acc_ptr", "dicts", "capsule",
                 "capsule_acc")

    @classmethod
    def make(cls, prior, tensors, weights):
        means, log_precisions, mixing_logits, pi0_logit, alpha, beta = tensors
        learn_pi0 = isinstance(pi0_logit, torch.nn.Parameter)
        J = log_precisions.numel()
        if J > _MAX_COMPONENTS:
            raise ValueError(f"at most {_MAX_COMPONENTS} mixture components are supported")
        if not (_c_takes(tensors) and _c_takes(weights) and means.numel() == J - 1
                and mixing_logits.numel() == J - 1 and pi0_logit.numel() == 1
                and alpha.numel() == J and beta.numel() == J):
            return None
        b = cls()
        b.tensors, b.ptrs = tuple(tensors), tuple(t.data_ptr() for t in tensors)
        b.weights, b.w_ptrs, b.nt = tuple(weights), tuple(w.data_ptr() for w in weights), len(weights)
        b.w_arr, b.n_arr = (_vp * b.nt)(*b.w_ptrs), (ctypes.c_int64 * b.nt)(*[w.numel() for w in weights])
        b.g_arr = (_vp * b.nt)()
        b.n_total = sum(b.n_arr)
        learnable = [means, log_precisions, mixing_logits] + ([pi0_logit] if learn_pi0 else [])
        b.learn = tuple((p, p.requires_grad) for p in learnable)
        b.grads = tuple(torch.zeros_like(p) for p in learnable)
        b.learn_pi0, b.J = learn_pi0, J
        buf = prior._workspace.mixture_buffers(J)
        b.mix, b.out = buf, prior._workspace.out
        b.acc = b.acc_ptr = b.capsule = b.capsule_acc = None
        params, buffers = prior.__dict__.get("_parameters", {}), prior.__dict__.get("_buffers", {})
        plain = all(params.get(n, buffers.get(n)) is t for n, t in zip(_NAMES, tensors))
        b.dicts = (params, buffers) if plain and len(weights) <= 64 else None   # as train_step finds them
        return b

    def bind(self, prior, ws, acc):
        """The capsule of this binding for ``_kernel.train_step`` (the next calls' path), for the
        running sum ``acc``; it borrows the objects this binding holds."""
        if _EXT is None or _LIB is not _OWN or self.dicts is None or ws._handle is None:
            return
        self.capsule = _EXT.bind(prior, ws, *self.dicts, self.tensors, self.weights,
                                 tuple(p for p, _ in self.learn), tuple(w for _, w in self.learn), self.grads,
                                 self.J, self.learn_pi0, _CUT + ws.SETS_MARGIN, self.mix.data_ptr(),
                                 self.out.data_ptr(), ctypes.addressof(self.w_arr), ctypes.addressof(self.n_arr),
                                 ctypes.addressof(self.g_arr), self.n_total, _MIN_PARALLEL, torch.get_num_threads,
                                 acc, self.acc_ptr if acc is not None else None)
        self.capsule_acc = acc

    def fits(self, tensors, weights) -> bool:
        if len(weights) != self.nt:
            return False
        for t, c, ptr in zip(tensors, self.tensors, self.ptrs):
            if t is not c or t.data_ptr() != ptr:
                return False
        for w, c, ptr in zip(weights, self.weights, self.w_ptrs):
            if w is not c or w.data_ptr() != ptr:
                return False
        for p, wanted in self.learn:
            if p.requires_grad != wanted:
                return False
        return True


def _prior_backward_c(prior, tensors, weights, scale, acc, factor):
    """The C kernel's call for ``prior_backward``; None where it cannot take the tensors."""
    ws = prior._workspace
    b = ws.binding
    if b is None or not b.fits(tensors, weights):
        b = ws.binding = _Binding.make(prior, tensors, weights)
        if b is None:
            return None
    g_arr = b.g_arr
    for i, w in enumerate(weights):       # the weights' gradients: new tensors at every step
        g = _ensure_grad(w)
        if not g.is_contiguous():         # (torch keeps a gradient's dtype and device the weight's)
            return None
        g_arr[i] = g.data_ptr()
    pg, setting = [None, None, None, None], 0
    for q, (p, wanted) in enumerate(b.learn):
        if wanted:
            g = pg[q] = p.grad
            if g is not None and g is not b.grads[q] and not g.is_contiguous():
                return None
    for q, (p, wanted) in enumerate(b.learn):
        if wanted:
            if pg[q] is None:
                pg[q] = p.grad = b.grads[q]
                setting |= 1 << q
            pg[q] = pg[q].data_ptr()
    acc_ptr = None
    if acc is not None:
        if acc is not b.acc:
            b.acc = acc
            b.acc_ptr = acc.data_ptr() if (acc.is_cpu and acc.dtype is torch.float64 and acc.numel() == 1) else None
        acc_ptr = b.acc_ptr
    plan = ws.count_call(b.J)
    cfg, info, ptrs = prior.config, ws.info, b.ptrs
    C = _LIB.sws_train_step(ws.handle(), b.J, ptrs[0], ptrs[1], ptrs[2], ptrs[3], b.learn_pi0,
                            float(cfg.pi0_a), float(cfg.pi0_b), ptrs[4], ptrs[5], b.nt, b.w_arr, b.n_arr,
                            g_arr, scale, _threads(), _MIN_PARALLEL, plan, ws.lo, ws.hi,
                            _CUT + ws.SETS_MARGIN, pg[0], pg[1], pg[2], pg[3], setting,
                            b.mix.data_ptr(), b.out.data_ptr(), info, acc_ptr, factor)
    if info[4] != 0:
        raise MemoryError("the prior's C kernel ran out of memory planning its grid")
    ws.J = b.J
    ws.n_exact += int(info[0])
    ws.n_seen += b.n_total
    ws.n_built = int(info[3])
    lo, hi = info[1], info[2]
    if lo - lo == 0.0 and hi - hi == 0.0:  # finite
        ws.lo, ws.hi = lo, hi
    if b.capsule is None or b.capsule_acc is not acc:
        b.bind(prior, ws, acc)
    if acc is None:
        return torch.scalar_tensor(C, dtype=torch.float64)
    if acc_ptr is None:                   # not a CPU float64 sum: added by torch
        acc += C * factor
    return C


def _mixture_backward_torch(prior, accumulated, scale, params, p_grads, learn_pi0) -> torch.Tensor:
    """The mixture's gradients in closed form (float64, on the prior's device), from the sums."""
    nll, _, _, d_logpi = accumulated
    with torch.no_grad():
        dev = prior.log_precisions.device
        nll, d_logpi = nll.to(dev), d_logpi.to(dev)
        S0 = -d_logpi
        gamma = prior.log_precisions.detach().double()
        lam = gamma.exp()
        alpha, beta = prior.alpha.double(), prior.beta.double()
        d_mu, d_gamma = (t.to(dev) for t in accumulated[1:3])
        hyper = ((1.0 - alpha) * gamma + beta * lam).sum()
        rest = -S0[1:].sum()
        t = prior.pi0_logit.detach().double()
        soft = torch.softmax(prior.mixing_logits.detach().double(), 0)
        grads = [d_mu[1:], d_gamma + (1.0 - alpha) + beta * lam, -S0[1:] - soft * rest]
        if learn_pi0:
            a, b = prior.config.pi0_a, prior.config.pi0_b
            sig, sig_neg = torch.sigmoid(t), torch.sigmoid(-t)
            hyper = hyper - ((a - 1.0) * torch.nn.functional.logsigmoid(t)
                             + (b - 1.0) * torch.nn.functional.logsigmoid(-t))
            grads.append(-S0[0] * sig_neg - sig * rest - (a - 1.0) * sig_neg + (b - 1.0) * sig)
        for g_acc, g in zip(p_grads, grads):
            if g_acc is not None:
                g_acc.add_(g.reshape(g_acc.shape).to(g_acc.dtype), alpha=scale)
        return nll + hyper


def mixture_nll_reference(mu, gamma, log_pi, weights) -> torch.Tensor:
    """Plain autograd over the full J x N matrix (the slow path), for tests and timing."""
    x = torch.cat([w.reshape(-1) for w in weights])[:, None]
    lj = log_pi + 0.5 * gamma - 0.5 * math.log(2 * math.pi) - 0.5 * gamma.exp() * (x - mu) ** 2
    return -torch.logsumexp(lj, dim=1).sum()

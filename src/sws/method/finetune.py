"""Recovering what snapping costs: fine-tuning the shared codebook after post-processing.

Beyond the paper (issue 13): with every assignment and every zero fixed, the
non-zero codebook values are trained, each with the gradient summed over the
weights assigned to it (as Deep Compression trains its centroids, Han et al.
2016, section 3.3).  The file stays as small: the same sparsity pattern, the
same indices, new values.  The codebook stays deduplicated with an exact zero.
Given a validation set, the values are scored before the first epoch and after
each one, and the best (lowest validation error, then loss) are kept: the
fine-tuning never leaves the network worse on validation than snapping did.
"""

from __future__ import annotations

from typing import Callable

import torch

from sws.method.batches import as_source, call_model, default_loss, logits_of, to_device
from sws.method.evaluate import evaluate

__all__ = ["finetune_codebook_"]


def _indices(p: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Each element's codebook index (exact float32 match)."""
    flat = p.detach().reshape(-1).float().cpu()
    order = torch.argsort(codebook)
    pos = torch.searchsorted(codebook[order], flat).clamp(max=len(codebook) - 1)
    idx = order[pos]
    if not torch.equal(codebook[idx], flat):
        raise ValueError("a covered tensor holds a value outside the codebook; quantise it first")
    return idx.to(p.device).reshape(p.shape)


def finetune_codebook_(model: torch.nn.Module, covered: dict[str, torch.Tensor], codebook: torch.Tensor, train,
                       *, epochs: int = 1, lr: float = 1e-4, batch_size: int = 256, seed: int = 0,
                       loss_fn: Callable | None = None, output: Callable | None = None,
                       device=None, quiet: bool = True, val=None) -> torch.Tensor:
    """Train the non-zero codebook values in place of the covered tensors; return the new codebook.

    Only the codebook changes (every other parameter is left as it is; batch-norm layers run
    in eval mode so their statistics stay); the zeros and the assignments are fixed.
    ``val``: a validation set; the values scoring best on it (those before fine-tuning
    included) are kept.
    """
    if epochs <= 0 or len(codebook) < 2:
        return codebook
    source = as_source(train)
    device = device or next(model.parameters()).device
    loss_fn, output = loss_fn or default_loss, output or logits_of
    index = {name: _indices(p, codebook) for name, p in covered.items()}
    values = torch.nn.Parameter(codebook[1:].clone().to(device))
    opt = torch.optim.Adam([values], lr=lr)
    gen = torch.Generator().manual_seed(seed + 777)
    was_training = model.training
    model.eval()
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in covered.values():
        p.requires_grad_(True)

    def write():
        full = torch.cat([values.detach().new_zeros(1), values.detach()])
        with torch.no_grad():
            for name, p in covered.items():
                p.copy_(full[index[name]].to(p.dtype))

    def score():
        r = evaluate(model, val, loss_fn=loss_fn, output=output, device=device)
        return (r.get("error", 0.0), r.get("loss", 0.0))

    best = None
    try:
        if val is not None:
            best = (score(), values.detach().clone())
        for _ in range(epochs):
            for _, (x, y) in source.epoch(batch_size, gen):
                write()
                x, y = to_device(x, device), to_device(y, device)
                loss = loss_fn(output(call_model(model, x)), y)
                for p in covered.values():
                    p.grad = None
                loss.backward()
                grad = torch.zeros(len(codebook), dtype=values.dtype, device=device)
                for name, p in covered.items():
                    g = p.grad                # None: a tensor the loss did not reach
                    if g is not None:
                        g = g.to_dense() if g.layout is not torch.strided else g   # nn.Embedding(sparse=True)
                        grad.index_add_(0, index[name].reshape(-1), g.reshape(-1).to(values.dtype))
                    p.grad = None
                values.grad = grad[1:]
                opt.step()
            if val is not None:
                write()
                now = score()
                if now < best[0]:
                    best = (now, values.detach().clone())
        if best is not None:
            with torch.no_grad():
                values.copy_(best[1])
    finally:
        write()
        for n, p in model.named_parameters():
            p.requires_grad_(requires[n])
        model.train(was_training)
    new = torch.cat([torch.zeros(1), values.detach().float().cpu()])
    # two values that met, or one that reached 0, become one entry (the writer needs distinct values)
    entries, remap = [0.0], []
    for v in new.tolist():
        v = 0.0 if v == 0 else v
        if v not in entries:
            entries.append(v)
        remap.append(entries.index(v))
    if len(entries) < len(new):
        table = torch.tensor(entries, dtype=torch.float32)
        mapping = torch.tensor(remap)
        with torch.no_grad():
            for name, p in covered.items():
                p.copy_(table[mapping[index[name].cpu()]].to(p.dtype).to(p.device))
        return table
    return new

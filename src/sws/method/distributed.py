"""Retraining in more than one process: DistributedDataParallel helpers.

Under ``torchrun`` each process holds a replica of the network and of the
prior and sees its own shard of every global minibatch.  ``sws.compress``
wraps the network in ``DistributedDataParallel`` when a process group is
initialised; DDP averages the data term's gradients over the ranks.  The
complexity term needs no communication for the weights: it is computed from
the covered weights, which are identical on every rank (DDP broadcasts rank
0's weights at wrap time and every step applies the same averaged update), so
``tau/N dC/dw`` is the same everywhere.  For the same reason the prior's own
gradients are identical on every rank; ``average_gradients`` still averages
them (one all-reduce of 3J - 2 numbers per step), so the prior stays identical
even where ranks would round differently (mixed hardware, thread counts).

Launch::

    torchrun --nproc_per_node 2 examples/compress_custom_model.py --distributed

CPU: backend ``gloo``; GPU: ``nccl``, one device per rank (``LOCAL_RANK``).
Batch-norm statistics are per rank unless the model is converted with
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (GPU only).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init", "is_distributed", "rank", "world_size", "is_main", "wrap", "broadcast_parameters", "sampler",
           "average_gradients", "all_reduce_sum", "barrier", "max_difference"]


def init(backend: str | None = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment variables.

    Returns True when more than one process takes part; without ``WORLD_SIZE``
    (a plain ``python`` run) nothing is initialised and False is returned.
    """
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return dist.get_world_size() > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when running distributed, else ``model`` itself."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op alone)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def sampler(dataset, shuffle: bool = True, seed: int = 0):
    """A ``DistributedSampler`` over ``dataset`` when distributed (else None, for DataLoader).

    With ``shuffle=False``, rank r gets samples r, r + W, r + 2W, ...; so local
    batch k of every rank together form global batch k of a single process run
    with W times the batch size.
    """
    if not is_distributed():
        return None
    from torch.utils.data.distributed import DistributedSampler
    return DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)


def average_gradients(params) -> None:
    """Average the ``.grad`` of ``params`` over the ranks, in one all-reduce (no-op alone)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_sum(values: list[float], device=None) -> list[float]:
    """Sum plain numbers over the ranks (per-epoch totals for the history records)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def max_difference(tensors) -> float:
    """Largest absolute difference of ``tensors`` between this rank and rank 0 (0 alone).

    A check that replicas stayed identical: rank 0's values are broadcast and
    compared on every rank; the maximum over the ranks is returned everywhere.
    """
    if not is_distributed():
        return 0.0
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max() if flat.numel() else flat.new_zeros(())
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return diff.item()

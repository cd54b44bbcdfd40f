"""Retraining under DistributedDataParallel: 2 CPU processes (gloo) match one process.

Rank r reads samples r, r + 2, ... (DistributedSampler without shuffling), so
the two local batches of 16 together are the single process's batch of 32.
DDP averages the data term's gradients; the complexity term and the prior are
computed from identical weights on both ranks.  The results agree up to
floating-point rounding of the gradient average.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sws
from sws.method import distributed

N, LOCAL_BATCH, WORLD = 128, 16, 2
SETTINGS = dict(epochs=2, init_sigma=0.05, lr_log_precisions=1e-2, tau=0.01)


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 10, generator=g)
    y = (x[:, :3].argmax(1))
    return model, TensorDataset(x, y)


def run(batch_size):
    model, ds = make()
    sampler = distributed.sampler(ds, shuffle=False)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler)
    model, report = sws.compress(model, loader, None, "tutorial", **SETTINGS)
    diff = distributed.max_difference(list(model.state_dict().values()))
    return model.state_dict(), report, diff


def _worker(rank, folder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=WORLD)
    try:
        state, report, diff = run(LOCAL_BATCH)
        torch.save({"state": state, "history": report.history, "diff": diff,
                    "world": report.world_size}, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single_state, single, _ = run(WORLD * LOCAL_BATCH)

    assert all(r["world"] == WORLD and r["diff"] == 0.0 for r in ranks)   # replicas identical
    for key, value in ranks[0]["state"].items():                          # rank 1 the same
        assert torch.equal(value, ranks[1]["state"][key])
    for r in ranks:
        for a, b in zip(r["history"], single.history):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["complexity"] == pytest.approx(b["complexity"], rel=1e-5)
            for k in ("means", "stds", "pis"):
                torch.testing.assert_close(torch.tensor(a["prior"][k]), torch.tensor(b["prior"][k]),
                                           rtol=1e-4, atol=1e-6)
    for key, value in single_state.items():                               # quantised weights
        other = ranks[0]["state"][key]
        same = (other == value).float().mean().item()
        assert same >= 0.99, f"{key}: only {same:.3f} of the values agree"
        torch.testing.assert_close(other, value, rtol=0, atol=0.05)

#!/usr/bin/env python
"""Soft weight-sharing inside a training loop you keep (``sws.SoftWeightSharing``).

A small MLP is trained on synthetic data, then retrained with the mixture prior in a plain
PyTorch loop: after every ``loss.backward()`` the prior adds its gradient, one Adam steps the
network and the mixture.  At the end the model is quantised in place and written as a ``.sws``
file, which ``sws.load`` reads back into a fresh instance.

    python examples/custom_training_loop.py --out loop.sws
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sws


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    return TensorDataset(x, (x[:, :3].sum(1) > 0).long())


def net():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))


def accuracy(model, ds):
    with torch.no_grad():
        x, y = ds.tensors
        return (model(x).argmax(1) == y).float().mean().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="loop.sws")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    train, val = data(2000, 0), data(500, 1)
    loader = DataLoader(train, batch_size=64, shuffle=True)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)      # 1. an ordinary pretraining
    for _ in range(5):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    print(f"pretrained accuracy {accuracy(model, val):.3f}")

    # 2. the prior on this model; the tutorial's settings with a faster-moving mixture for a short run
    s = sws.SoftWeightSharing(model, "tutorial", n_train=len(train), tau=0.02, init_sigma=0.05,
                              lr_weights=1e-3, lr_log_precisions=1e-2, lr_mixing=1e-2)
    opt = s.optimizer()
    for epoch in range(args.epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            s.backward(epoch=epoch)          # + (tau / N) dC/dp
            opt.step()
    print(f"retrained accuracy {accuracy(model, val):.3f}")

    q = s.quantize_()                        # 3. post-process in place, 4. save
    size = s.save(args.out)
    stats = s.stats()["total"]
    print(f"quantised accuracy {accuracy(model, val):.3f}, {100 * stats['nonzero_share']:.1f} % non-zero, "
          f"{len(q.codebook)} values, {args.out}: {size} bytes")
    back = sws.load(args.out, model=net())
    assert torch.equal(back(val.tensors[0]), model(val.tensors[0]))
    print("loaded back: outputs identical")
    return stats


if __name__ == "__main__":
    main()

"""Compress a user-defined PyTorch model with soft weight-sharing.

A small CNN with batch-norm, trained on synthetic 16x16 images (ten noisy
class templates, so the script needs no download), then compressed with
``sws.compress``, written as a ``.sws`` file and loaded back into a fresh
instance of the same class.

    python examples/compress_custom_model.py --out custom.sws
    torchrun --nproc_per_node 2 examples/compress_custom_model.py --distributed --out custom.sws

Takes about 10 s on one CPU core with the defaults.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sws
from sws.method import distributed


class SmallCNN(nn.Module):
    """Your own model: any module whose weights live in standard layers."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                                  nn.Linear(64, classes))

    def forward(self, x):
        return self.head(self.features(x))


NOISE = 2.0


def synthetic_data(n: int, seed: int = 0, classes: int = 10):
    """Images = class template + noise; labels balanced."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 1, 16, 16, generator=torch.Generator().manual_seed(1234))
    y = torch.arange(n) % classes
    x = templates[y] + NOISE * torch.randn(n, 1, 16, 16, generator=g)
    return TensorDataset(x, y)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="custom.sws", help="compressed file to write")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10, help="retraining epochs")
    ap.add_argument("--batch-size", type=int, default=64, help="per process")
    ap.add_argument("--tau", type=float, default=0.003)
    ap.add_argument("--distributed", action="store_true", help="run under torchrun (gloo on CPU)")
    ap.add_argument("--report", default=None, help="write the report as JSON here")
    ap.add_argument("--write-over-budget", action="store_true",
                    help="write the file even when no state met the accuracy budget")
    args = ap.parse_args(argv)
    if args.distributed:
        distributed.init()

    torch.manual_seed(0)
    train, val = synthetic_data(args.n_train, seed=0), synthetic_data(500, seed=1)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)

    model = SmallCNN()                       # 1. your pretrained model (trained briefly here)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(args.pretrain_epochs):
        for x, y in train_loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    # 2. compress: the prior covers the convolutions and linear layers, not batch-norm;
    #    the first convolution (144 weights) is left at full precision as an example.
    #    A few epochs need a faster-moving mixture than the tutorial's 30: narrow
    #    components from the start, a smaller fixed zero share, larger mixture learning rates.
    model, report = sws.compress(
        model, train, val, "tutorial", epochs=args.epochs, tau=args.tau, batch_size=args.batch_size,
        init="range", init_sigma=0.02, pi0=0.9, lr_means=1e-3, lr_log_precisions=1e-2,
        lr_mixing=1e-2, exclude=["features.0.*"], out=args.out, quiet=not distributed.is_main(),
        write_over_budget=args.write_over_budget)

    if distributed.is_main() and report.file is None:     # over the accuracy budget: no file
        print(f"{report.budget['message']}; {args.out} not written (--write-over-budget writes it)")
    elif distributed.is_main():
        m = report.metrics
        print(f"accuracy: pretrained {m['before_accuracy']:.3f}, retrained "
              f"{m['retrained_accuracy']:.3f}, quantised {m['quantized_accuracy']:.3f}")
        print(f"non-zero weights {100 * report.nonzero_share:.1f} %, {report.distinct_values} "
              f"distinct values, {args.out}: {report.file['bytes']} bytes, CR "
              f"{report.file['cr_file']:.1f} (file), {report.file['cr_paper']:.1f} (paper)")
        # 3. load into a fresh instance of your class: the network the file holds, scored itself
        restored = sws.load(args.out, model=SmallCNN()).eval()
        x, y = val.tensors
        with torch.no_grad():
            out = restored(x)
            assert torch.equal(out, model(x)), "loaded model differs"
        print(f"loaded back into SmallCNN(): outputs identical; the file's network scores "
              f"{(out.argmax(1) == y).float().mean().item():.3f} on the validation set")
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report.to_dict(), f)
    distributed.barrier()
    return report


if __name__ == "__main__":
    main()

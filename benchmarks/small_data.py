#!/usr/bin/env python
"""``sws.compress`` with its defaults on a user network trained on a small data set (thirteenth session).

Usage: OMP_NUM_THREADS=1 python benchmarks/small_data.py {mlp,cnn} [--epochs N] [--out FILE]

mlp: Gaussian blobs (20 features, 10 classes), an MLP 20-256-256-10 (73,738 weights); cnn: 3x16x16
images whose class is a bright bar's row band (4 classes), a conv net with batch-norm (38,276
weights).  6,000 training, 1,000 validation and 2,000 test samples, seeded; the network is pretrained
with Adam for 8 epochs, then ``sws.compress(model, train, val, "tutorial")`` runs with nothing else
set (``--epochs 30`` passes ``epochs=30``: one pass an epoch, what the preset gave before an epoch
took several passes over a small training set; ``--init``, ``--init-sigma`` add those).  Prints the
test error before and, read back from the file written, after; the file's compression rate, the
budget's decision, tau and the validation errors of the first and last epochs, and the mixture's
sds at the end.  ``--hand-loop STEPS`` instead runs a ``SoftWeightSharing`` loop and prints each
weight matrix's norm before and after.
"""

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import sws


def task(kind, g):
    if kind == "mlp":
        centers = torch.randn(10, 20, generator=g) * 2.0

        def make(n):
            y = torch.randint(0, 10, (n,), generator=g)
            return TensorDataset(centers[y] + torch.randn(n, 20, generator=g) * 1.5, y)

        model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    else:
        def make(n):
            y = torch.randint(0, 4, (n,), generator=g)
            x = torch.randn(n, 3, 16, 16, generator=g) * 0.5
            for c in range(4):
                x[y == c, c % 3, 4 * c:4 * c + 3, :] += 1.0
            return TensorDataset(x, y)

        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 4))
    return model, make(6000), make(1000), make(2000)


def error(model, ds):
    model.eval()
    with torch.no_grad():
        return (model(ds.tensors[0]).argmax(1) != ds.tensors[1]).float().mean().item()


def pretrained(kind):
    """The task's network after 8 epochs of Adam, and its data."""
    torch.manual_seed(0)
    model, train, val, test = task(kind, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(8):
        model.train()
        perm = torch.randperm(len(train))
        for i in range(0, len(train), 128):
            x, y = train[perm[i:i + 128]]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, train, val, test


def hand_loop(kind, steps, prior_kw):
    """``steps`` steps of a hand-written ``SoftWeightSharing`` loop: each weight matrix's norm before
    and after, the mixture, the retrained network's test error."""
    model, train, _, test = pretrained(kind)
    before = {n: p.detach().norm().item() for n, p in model.named_parameters() if p.dim() > 1}
    s = sws.SoftWeightSharing(model, "tutorial", n_train=len(train), **prior_kw)
    opt, g = s.optimizer(), torch.Generator().manual_seed(1)
    model.train()
    for t in range(steps):
        x, y = train[torch.randint(0, len(train), (256,), generator=g)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        s.backward(epoch=30 * t / steps)
        opt.step()
    for n, b in before.items():
        print(f"  {n}: norm {b:.3f} -> {model.get_parameter(n).detach().norm().item():.3f}")
    mix = s.prior.summary()
    print(f"  mixture: sd {[round(v, 4) for v in mix['stds']]}\n  means {[round(v, 3) for v in mix['means']]}")
    print(f"  retrained (not post-processed) test error {100 * error(model, test):.2f} %")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["mlp", "cnn"])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--init", default=None, help="PriorConfig.init for the call (default: the preset's)")
    ap.add_argument("--init-sigma", type=float, default=None)
    ap.add_argument("--hand-loop", type=int, default=0, metavar="STEPS",
                    help="instead: STEPS steps of a SoftWeightSharing loop, the weights' norms")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    kw = {k: v for k, v in (("init", a.init), ("init_sigma", a.init_sigma)) if v is not None}
    if a.hand_loop:
        return hand_loop(a.kind, a.hand_loop, kw)
    model, train, val, test = pretrained(a.kind)
    weights = sum(p.numel() for p in model.parameters())
    print(f"{a.kind}: {weights} weights, pretrained test error {100 * error(model, test):.2f} %")
    out = a.out or Path(tempfile.mkdtemp()) / f"{a.kind}.sws"
    if a.epochs is not None:
        kw["epochs"] = a.epochs
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, rep = sws.compress(model, train, val, "tutorial", out=out, overwrite=True, **kw)
    seconds = time.perf_counter() - t0
    if rep.file:     # the number reported is the file's network, read back into a fresh instance
        fresh = task(a.kind, torch.Generator().manual_seed(0))[0]
        kept = f"the file's network: test error {100 * error(sws.load(out, model=fresh), test):.2f} %, " \
               f"CR {rep.file['cr_file']:.1f} from its bytes"
    else:
        kept = f"no file written (the returned network: test error {100 * error(model, test):.2f} %)"
    print(f"compress: {seconds:.1f} s, epochs {rep.config['epochs']} of {rep.config['passes_per_epoch']} passes, "
          f"non-zero {100 * rep.nonzero_share:.2f} %, {kept}; budget {rep.budget.get('status')}: "
          f"{rep.budget.get('message')}")
    for w in caught:
        print("warning:", str(w.message)[:300])
    rows = [r for r in rep.history if "pp_val_error" in r]
    for r in rows[:3] + rows[-3:]:
        print(f"  epoch {r['epoch']}{' (snap)' if r.get('snap') else ''}: tau {r['tau']:.4g}, val error "
              f"{100 * r['val_error']:.2f} %, post-processed {100 * r['pp_val_error']:.2f} %, CR {r['pp_cr']:.1f}")
    print(f"  largest tau {max(r['tau'] for r in rep.history):.4g}; the mixture at the end: sd "
          f"{[round(v, 4) for v in rep.history[-1]['prior']['stds']]}")


if __name__ == "__main__":
    main()

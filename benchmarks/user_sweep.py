#!/usr/bin/env python
"""Robustness sweep of sws's public API on user networks and data sets not in the repository.

    OMP_NUM_THREADS=1 python benchmarks/user_sweep.py [NAME_SUBSTRING ...]

Written in the thirteenth session (issue 15's stop): its failures then are fixed and tested in
tests/test_user_inputs.py; the cases it now counts as FAIL are the refusals added then (max_norm
embeddings, pruned layers, a batch-norm epoch ending on one item).  Files go to a temporary folder.

Every case runs in this one process (the CLI case through sws.cli.main in-process), catches its
own exceptions and ends up in a PASS / FAIL / UGLY-ERROR / CLEAN-ERROR table:
  PASS        a valid input compressed, the loaded net matches the returned model (allclose 1e-5,
              and every state-dict tensor bit for bit), the report's numbers are consistent
  FAIL        a valid input raised, or the loaded net / report is wrong
  CLEAN-ERROR a bad input raised a named sws error (SwsError subclass) -- the wanted outcome
  UGLY-ERROR  a bad input raised something else (an internal / torch traceback)
  ACCEPTED    a bad input went through without any error (see the note)
"""

from __future__ import annotations

import io
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

import sws  # noqa: E402
from sws.errors import SwsError  # noqa: E402

torch.set_num_threads(1)
TMP = Path(tempfile.mkdtemp(prefix="sws_sweep_"))
warnings.simplefilter("ignore")

CASES = []


def case(name, bad=False):
    def deco(f):
        CASES.append((name, bad, f))
        return f
    return deco


class Fail(Exception):
    """A check on a successful run failed."""


# ----------------------------------------------------------------------------- data
def gen(seed):
    return torch.Generator().manual_seed(seed)


def cls_data(shape, n=200, classes=3, seed=0):
    """Random inputs of shape (n, *shape); labels from the sign of a fixed projection (learnable)."""
    x = torch.randn((n,) + tuple(shape), generator=gen(seed))
    s = x.reshape(n, -1)[:, :4].sum(1)
    y = torch.bucketize(s, torch.tensor([-0.7, 0.7])) if classes == 3 else (s > 0).long()
    return TensorDataset(x, y.clamp(max=classes - 1))


def tok_data(n=200, length=12, vocab=30, classes=3, seed=0):
    x = torch.randint(0, vocab, (n, length), generator=gen(seed))
    y = (x[:, 0] % classes).long()
    return TensorDataset(x, y)


def split(ds_fn, *a, **k):
    return ds_fn(*a, seed=0, **k), ds_fn(*a, seed=1, n=80, **{kk: v for kk, v in k.items() if kk != "n"})


# ----------------------------------------------------------------------------- checks
def outputs_of(net, x):
    with torch.no_grad():
        return net(**x) if isinstance(x, dict) else net(x)


def flat(o):
    if torch.is_tensor(o):
        return [o]
    if isinstance(o, dict):
        return [t for k in sorted(o) for t in flat(o[k])]
    if isinstance(o, (tuple, list)):
        return [t for v in o for t in flat(v)]
    if o is None:
        return []
    if hasattr(o, "logits"):
        return [o.logits]
    raise Fail(f"cannot compare an output of type {type(o).__name__}")


def compare(model, net, x, note):
    model.eval(), net.eval()
    a, b = flat(outputs_of(model, x)), flat(outputs_of(net, x))
    if len(a) != len(b):
        raise Fail(f"{note}: {len(a)} vs {len(b)} output tensors")
    for i, (u, v) in enumerate(zip(a, b)):
        if u.shape != v.shape:
            raise Fail(f"{note}: output {i} shapes {tuple(u.shape)} vs {tuple(v.shape)}")
        if not torch.allclose(u, v, atol=1e-5, rtol=1e-5, equal_nan=True):
            raise Fail(f"{note}: output {i} differs, max |d| = {(u - v).abs().max().item():.3g}")
    return max(((u - v).abs().max().item() if u.numel() else 0.0) for u, v in zip(a, b)) if a else 0.0


def compare_state(model, net):
    sa, sb = model.state_dict(), net.state_dict()
    if sa.keys() != sb.keys():
        raise Fail(f"state-dict keys differ: {sorted(set(sa) ^ set(sb))[:3]}")
    for k in sa:
        u, v = sa[k], sb[k]
        if u.shape != v.shape or u.dtype != v.dtype or not torch.equal(u.cpu(), v.cpu()):
            if not (u.is_floating_point() and torch.equal(u.isnan(), v.isnan())
                    and torch.equal(u.nan_to_num(), v.nan_to_num())):
                raise Fail(f"state-dict tensor {k} differs after sws.load")


def check_report(model, report, path=None):
    notes = []
    cb = torch.tensor(report.codebook)
    if cb.numel() == 0 or cb[0].item() != 0.0:
        raise Fail(f"codebook entry 0 is not 0: {report.codebook[:3]}")
    params = dict(model.named_parameters())
    total = nz = 0
    for name in report.covered:
        p = params.get(name)
        if p is None:
            try:
                p = model.get_parameter(name)
            except Exception:
                raise Fail(f"covered name {name} not a parameter of the returned model")
        vals = p.detach().reshape(-1).float()
        inside = torch.isin(vals, cb)
        if not bool(inside.all()):
            raise Fail(f"{name} holds {int((~inside).sum())} values outside the codebook")
        total += vals.numel()
        nz += int(vals.ne(0).sum())
    share = nz / max(total, 1)
    if not math.isclose(share, report.nonzero_share, abs_tol=1e-9):
        raise Fail(f"report.nonzero_share {report.nonzero_share} != counted {share}")
    if not 0 <= report.nonzero_share <= 1:
        raise Fail(f"nonzero_share {report.nonzero_share} out of [0,1]")
    if report.distinct_values > len(report.codebook):
        raise Fail(f"distinct_values {report.distinct_values} > codebook size {len(report.codebook)}")
    if path is not None:
        f = report.file
        if f is None or f["bytes"] != Path(path).stat().st_size:
            raise Fail(f"report.file {f} does not match the file size {Path(path).stat().st_size}")
        if not (f["cr_file"] > 0 and math.isfinite(f["cr_file"])):
            raise Fail(f"cr_file {f['cr_file']}")
        notes.append(f"CR {f['cr_file']:.1f}")
    for k, v in report.metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            notes.append(f"metric {k}={v}")
    notes.append(f"nz {100 * report.nonzero_share:.1f}% K={len(report.codebook)} "
                 f"budget={report.budget.get('status')}")
    return notes


def user_pretrain(model, train, loss_fn=None, output=None, epochs=8, lr=1e-2):
    """A plain user pretraining loop (so the weights are not an untrained init that all snaps to 0)."""
    if isinstance(train, DataLoader):
        loader = train
    else:
        loader = DataLoader(train, batch_size=32, shuffle=True, generator=gen(0))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    sparse = any(isinstance(m, nn.Embedding) and m.sparse for m in model.modules())
    opt = (torch.optim.SGD(params, lr=0.1) if sparse else torch.optim.Adam(params, lr=lr))
    loss_fn = loss_fn or (lambda s, y: F.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1).long()))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            out = model(**x) if isinstance(x, dict) else model(x)
            s = output(out) if output else (out[0] if isinstance(out, (tuple, list)) else
                                            out["logits"] if isinstance(out, dict) else out)
            loss = loss_fn(s, y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def roundtrip(make, train, val, *, x=None, seed=0, epochs=2, load_make=None, prep=None, pre=True, **kw):
    """(user-pretrain) -> compress -> load into a fresh instance -> compare outputs and tensors."""
    torch.manual_seed(seed)
    model = make()
    if pre:
        try:
            user_pretrain(model, train, kw.get("loss_fn"), kw.get("output"))
        except Exception as e:   # noqa: BLE001 - bad-input cases may not pretrain; compress decides
            if not isinstance(e, (RuntimeError, ValueError, IndexError, TypeError, KeyError, StopIteration)):
                raise
    if prep is not None:
        prep(model)
    path = TMP / f"m{len(os.listdir(TMP))}.sws"
    kw.setdefault("init_sigma", 0.05)              # a 2-epoch run: narrower components than the tutorial's
    if not isinstance(train, DataLoader):
        kw.setdefault("batch_size", 32)
    model, report = sws.compress(model, train, val, "tutorial", epochs=epochs, out=path, **kw)
    torch.manual_seed(seed + 99)
    fresh = (load_make or make)()
    net = sws.load(path, model=fresh)
    if x is None:
        src = val if val is not None else train
        src = src.dataset if isinstance(src, DataLoader) else src
        if isinstance(src, TensorDataset):
            x = src.tensors[0][:16]
        else:
            x = torch.utils.data.default_collate([src[i] for i in range(min(16, len(src)))])[0]
    d = compare(model, net, x, "loaded vs returned")
    compare_state(model, net)
    notes = check_report(model, report, path)
    return f"max|d|={d:.1e}; " + "; ".join(notes), model, report, net


# ----------------------------------------------------------------------------- models
class RNNClf(nn.Module):
    def __init__(self, cell=nn.LSTM, bidir=True, layers=2, **kw):
        super().__init__()
        self.rnn = cell(8, 12, num_layers=layers, batch_first=True, bidirectional=bidir, **kw)
        self.fc = nn.Linear(12 * (2 if bidir else 1), 3)

    def forward(self, x):
        self.rnn.flatten_parameters()
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class MHAClf(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.fc((h + a).mean(1))


class TransfClf(nn.Module):
    def __init__(self, tokens=False, norm_first=False):
        super().__init__()
        self.tokens = tokens
        self.inp = nn.Embedding(30, 16) if tokens else nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.enc(self.inp(x)).mean(1))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 8, 3, dilation=2, padding=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean(-1))


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv3d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.c(x))).mean((2, 3, 4)))


class ConvTNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.t = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.t(F.relu(self.c(x)))).mean((2, 3)))


def seq_grouped():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=4),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16), nn.BatchNorm2d(16),
                         nn.ReLU(), nn.Conv2d(16, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))


def seq_conv1d_flatten():
    return nn.Sequential(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                         nn.Linear(6 * 7, 10), nn.Dropout(0.3), nn.Tanh(), nn.Linear(10, 3))


class NormsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 16)
        self.bn1 = nn.BatchNorm1d(16)
        self.ln = nn.LayerNorm(16)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        h = F.relu(self.inorm(self.gn(self.c(x))))
        h = F.relu(self.bn2(self.c2(h))).mean((2, 3))
        h = self.drop(F.relu(self.ln(self.bn1(self.fc1(h)))))
        return self.fc2(h)


class TiedLM(nn.Module):
    """Embedding tied with the output projection; per-token scores (n, T, V)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.mix = nn.Linear(16, 16)
        self.out = nn.Linear(16, 30, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.tanh(self.mix(self.emb(x))))


class TwiceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(10, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.block(self.block(F.relu(self.inp(x)))))


def seq_twice():
    lin = nn.Linear(16, 16)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(16, 3))


class EmbBagNet(nn.Module):
    def __init__(self, mode="mean"):
        super().__init__()
        self.bag = nn.EmbeddingBag(30, 16, mode=mode)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.bag(x))


class EmbNet(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.emb = nn.Embedding(30, 16, **kw)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.emb(x).mean(1))


class ParamContainers(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(10, 16) * 0.3)
        self.plist = nn.ParameterList([nn.Parameter(torch.randn(16, 16) * 0.25), nn.Parameter(torch.zeros(16))])
        self.pdict = nn.ParameterDict({"proj": nn.Parameter(torch.randn(16, 3) * 0.25),
                                       "b": nn.Parameter(torch.zeros(3))})
        self.scale = nn.Parameter(torch.tensor(1.0))        # 0-d: a layer with a single weight

    def forward(self, x):
        h = F.relu(x @ self.w)
        h = F.relu(h @ self.plist[0] + self.plist[1])
        return self.scale * (h @ self.pdict["proj"]) + self.pdict["b"]


def mlp(inp=10, hid=16, out=3, bias=True):
    return nn.Sequential(nn.Linear(inp, hid, bias=bias), nn.ReLU(), nn.Linear(hid, hid, bias=bias), nn.ReLU(),
                         nn.Linear(hid, out, bias=bias))


class MLP(nn.Module):
    def __init__(self, inp=10, out=3):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(inp, 16), nn.Linear(16, 16), nn.Linear(16, out)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TupleOut(MLP):
    def forward(self, x):
        s = super().forward(x)
        return s, s.softmax(-1)


class DictOut(MLP):
    def forward(self, x):
        s = super().forward(x)
        return {"scores": s, "probs": s.softmax(-1)}


class DictLogits(MLP):
    def forward(self, x):
        return {"hidden": x, "logits": super().forward(x)}


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(10, 16), nn.Linear(5, 16), nn.Linear(16, 3)

    def forward(self, a, b):
        return self.fc(F.relu(self.a(a) + self.b(b)))


class TupleInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(10, 16), nn.Linear(5, 16), nn.Linear(16, 3)

    def forward(self, x):
        a, b = x
        return self.fc(F.relu(self.a(a) + self.b(b)))


class NonContig(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 10).t() * 0.3)   # non-contiguous (10, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(F.relu(x @ self.w))


class NoParams(nn.Module):
    def forward(self, x):
        return x[:, :3]


class BoolBuf(MLP):
    def __init__(self):
        super().__init__()
        self.register_buffer("mask", torch.ones(3, dtype=torch.bool))


class DictItems(Dataset):
    """Items as {"x": ..., "y": ...} (no (input, target) pair)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return {"x": x, "y": y}


class DictInputs(Dataset):
    """Items as ({"a": ..., "b": ...}, y): two named inputs."""

    def __init__(self, n, seed):
        g = gen(seed)
        self.a, self.b = torch.randn(n, 10, generator=g), torch.randn(n, 5, generator=g)
        self.y = ((self.a[:, 0] + self.b[:, 0]) > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"a": self.a[i], "b": self.b[i]}, self.y[i]


class TupleInputs(DictInputs):
    def __getitem__(self, i):
        return (self.a[i], self.b[i]), self.y[i]


# ----------------------------------------------------------------------------- cases: networks
SEQ = split(cls_data, (10, 8))
IMG = split(cls_data, (3, 8, 8))
VEC = split(cls_data, (10,))
TOK = split(tok_data)


@case("lstm bidir 2-layer")
def _():
    return roundtrip(lambda: RNNClf(nn.LSTM), *SEQ)[0]


class LSTMProj(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 12, num_layers=2, batch_first=True, proj_size=6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        self.rnn.flatten_parameters()
        return self.fc(self.rnn(x)[0][:, -1])


@case("lstm proj_size (weight_hr_l0)")
def _():
    return roundtrip(LSTMProj, *SEQ)[0]


@case("gru bidir 2-layer")
def _():
    return roundtrip(lambda: RNNClf(nn.GRU), *SEQ)[0]


@case("rnn tanh bidir 2-layer")
def _():
    return roundtrip(lambda: RNNClf(nn.RNN), *SEQ)[0]


@case("rnn relu 1-layer budget=False")
def _():
    return roundtrip(lambda: RNNClf(nn.RNN, bidir=False, layers=1, nonlinearity="relu"), *SEQ, budget=False)[0]


@case("multihead attention batch_first")
def _():
    return roundtrip(MHAClf, *SEQ)[0]


@case("transformer encoder (dropout, eval fast path)")
def _():
    return roundtrip(TransfClf, *SEQ)[0]


@case("transformer encoder norm_first tokens budget=False")
def _():
    return roundtrip(lambda: TransfClf(tokens=True, norm_first=True), *TOK, budget=False)[0]


@case("conv1d + dilated conv1d")
def _():
    return roundtrip(Conv1dNet, *split(cls_data, (4, 16)))[0]


@case("conv3d + batchnorm3d")
def _():
    return roundtrip(Conv3dNet, *split(cls_data, (2, 4, 4, 4), n=120))[0]


@case("convtranspose2d grouped")
def _():
    return roundtrip(ConvTNet, *IMG)[0]


@case("sequential grouped/depthwise/dilated conv (dead units)")
def _():
    note, model, report, _ = roundtrip(seq_grouped, *IMG)
    return note + f"; dead dropped {report.config['dead_unit_weights_dropped']}"


@case("sequential conv1d-bn1d-pool-flatten-linear (dead units)")
def _():
    note, model, report, _ = roundtrip(seq_conv1d_flatten, *split(cls_data, (4, 16)))
    return note + f"; dead dropped {report.config['dead_unit_weights_dropped']}"


@case("dead units actually fire (mlp, small init, budget=False)")
def _():
    def prep(m):
        with torch.no_grad():
            m[0].weight[:8] = 0.0       # units 0..7 of layer 0 silent
            m[0].bias[:8] = 0.0
    note, model, report, net = roundtrip(mlp, *VEC, prep=prep, budget=False)
    return note + f"; dead dropped {report.config['dead_unit_weights_dropped']}"


@case("norms: bn1d/bn2d/layernorm/groupnorm/instancenorm affine, dropout")
def _():
    note, model, report, _ = roundtrip(NormsNet, *IMG)
    norm_covered = [n for n in report.covered if n.split(".")[0] in ("gn", "inorm", "bn1", "bn2", "ln")]
    if norm_covered:
        raise Fail(f"norm params covered: {norm_covered}")
    return note


@case("norms budget=False, recalibrate_bn=False")
def _():
    return roundtrip(NormsNet, *IMG, budget=False, recalibrate_bn=False)[0]


@case("batchnorm1d, last train batch of 1 sample (n=257, bs=256)")
def _():
    train = cls_data((10,), n=257)
    return roundtrip(lambda: nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)),
                     train, VEC[1], epochs=1)[0]


@case("tied embedding/output projection (seq labels)")
def _():
    def ds(n, seed):
        return TensorDataset(*(lambda x: (x, (x + 1) % 30))(torch.randint(0, 30, (n, 8), generator=gen(seed))))
    note, model, report, net = roundtrip(TiedLM, ds(200, 0), ds(60, 1))
    if net.out.weight is not net.emb.weight:
        raise Fail("tie lost after load")
    if "out.weight" in report.covered:
        raise Fail("tied tensor covered twice")
    return note


@case("submodule used twice in forward")
def _():
    return roundtrip(TwiceNet, *VEC)[0]


@case("sequential with the same Linear twice (dead units)")
def _():
    note, model, report, net = roundtrip(seq_twice, *VEC)
    if net[2] is not net[4]:
        raise Fail("shared module lost")
    return note + f"; dead dropped {report.config['dead_unit_weights_dropped']}"


@case("embedding dense, long token ids")
def _():
    return roundtrip(EmbNet, *TOK)[0]


@case("embedding padding_idx + max_norm")
def _():
    return roundtrip(lambda: EmbNet(padding_idx=0, max_norm=1.0), *TOK)[0]


@case("embedding sparse=True")
def _():
    return roundtrip(lambda: EmbNet(sparse=True), *TOK)[0]


@case("embeddingbag mean, 2-D long input")
def _():
    return roundtrip(EmbBagNet, *TOK)[0]


@case("embeddingbag sum budget=False")
def _():
    return roundtrip(lambda: EmbBagNet("sum"), *TOK, budget=False)[0]


@case("ParameterList/ParameterDict/raw 0-d Parameter")
def _():
    return roundtrip(ParamContainers, *VEC)[0]


@case("frozen first layer (requires_grad=False)")
def _():
    state = {}

    def prep(m):
        m.fc1.requires_grad_(False)
        state["w"] = m.fc1.weight.detach().clone()
    note, model, report, net = roundtrip(MLP, *VEC, prep=prep)
    if any(n.startswith("fc1.") for n in report.covered):
        raise Fail("frozen fc1 covered")
    if not torch.equal(model.fc1.weight, state["w"]):
        raise Fail("frozen fc1 changed")
    if model.fc1.weight.requires_grad:
        raise Fail("frozen fc1 requires_grad restored to True")
    return note


@case("unused parameter + float buffer")
def _():
    class M(MLP):
        def __init__(self):
            super().__init__()
            self.unused = nn.Linear(4, 4)
            self.register_buffer("scale", torch.full((3,), 2.0))

        def forward(self, x):
            return super().forward(x) * self.scale
    return roundtrip(M, *VEC)[0]


@case("no biases anywhere")
def _():
    return roundtrip(lambda: mlp(bias=False), *VEC)[0]


@case("single-weight layer Linear(1,1) + all-zero-init layer")
def _():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.z = nn.Linear(10, 16), nn.Linear(16, 16)
            self.one, self.fc2 = nn.Linear(1, 1), nn.Linear(16, 3)
            nn.init.zeros_(self.z.weight), nn.init.zeros_(self.z.bias)

        def forward(self, x):
            h = F.relu(self.fc1(x))
            h = h + self.z(h)
            return self.fc2(h) + self.one(x[:, :1])
    return roundtrip(M, *VEC)[0]


@case("whole model initialised to zeros")
def _():
    def prep(m):
        for p in m.parameters():
            nn.init.zeros_(p)
    return roundtrip(MLP, *VEC, prep=prep)[0]


def _pruned():
    import torch.nn.utils.prune as prune
    m = MLP()
    prune.l1_unstructured(m.fc1, "weight", amount=0.5)
    prune.l1_unstructured(m.fc2, "weight", amount=0.5)
    return m


@case("torch.nn.utils.prune pruned model, load into pruned instance")
def _():
    note, model, report, net = roundtrip(_pruned, *VEC)
    covered = [n for n in report.covered if "orig" in n]
    eff = model.fc1.weight.ne(0).float().mean().item()
    return note + f"; covers {covered}; effective fc1 nz {eff:.2f}; fc1.weight_mask stored raw"


@case("prune: load into an unpruned instance", bad=True)
def _():
    roundtrip(_pruned, *VEC, load_make=MLP)


@case("mse regression, float targets (n,1)")
def _():
    def ds(n, seed):
        return (lambda x: TensorDataset(x, x[:, :2].sum(1, keepdim=True)))(torch.randn(n, 10, generator=gen(seed)))
    note, model, report, _ = roundtrip(lambda: MLP(out=1), ds(200, 0), ds(60, 1), loss_fn=nn.MSELoss())
    return note + f"; metrics keys {sorted(report.metrics)[:3]}"


@case("F.mse_loss multi-output regression (n,3) budget=False")
def _():
    def ds(n, seed):
        return (lambda x: TensorDataset(x, x[:, :3] * 2))(torch.randn(n, 10, generator=gen(seed)))
    return roundtrip(MLP, ds(200, 0), ds(60, 1), loss_fn=F.mse_loss, budget=False)[0]


@case("multi-label BCEWithLogits float 0/1 targets")
def _():
    def ds(n, seed):
        return (lambda x: TensorDataset(x, (x[:, :5] > 0).float()))(torch.randn(n, 10, generator=gen(seed)))
    return roundtrip(lambda: MLP(out=5), ds(200, 0), ds(60, 1), loss_fn=nn.BCEWithLogitsLoss())[0]


@case("multi-label float 0/1 targets, default loss (no loss_fn)", bad=True)
def _():
    def ds(n, seed):
        return (lambda x: TensorDataset(x, (x[:, :5] > 0).float()))(torch.randn(n, 10, generator=gen(seed)))
    note, model, report, _ = roundtrip(lambda: MLP(out=5), ds(200, 0), ds(60, 1))
    return "silently trained with softmax cross-entropy on 0/1 'probabilities'; " + note


@case("forward returns a tuple (default picks [0])")
def _():
    return roundtrip(TupleOut, *VEC)[0]


@case("forward returns a dict, output=lambda o: o['scores']")
def _():
    return roundtrip(DictOut, *VEC, output=lambda o: o["scores"])[0]


@case("forward returns a dict with 'logits'")
def _():
    return roundtrip(DictLogits, *VEC)[0]


@case("forward returns a dict without output=", bad=True)
def _():
    roundtrip(DictOut, *VEC)


@case("two inputs via dict items ({'a','b'}, y) -> model(**x)")
def _():
    tr, va = DictInputs(200, 0), DictInputs(60, 1)
    x = {"a": va.a[:16], "b": va.b[:16]}
    return roundtrip(TwoInputs, tr, va, x=x)[0]


@case("two inputs as a tuple item ((a, b), y) -> model((a, b))")
def _():
    tr, va = TupleInputs(200, 0), TupleInputs(60, 1)
    return roundtrip(TupleInput, tr, va, x=(va.a[:16], va.b[:16]))[0]


@case("TensorDataset of 3 tensors (a, b, y)", bad=True)
def _():
    g = gen(0)
    ds = TensorDataset(torch.randn(50, 10, generator=g), torch.randn(50, 5, generator=g), torch.zeros(50).long())
    roundtrip(TwoInputs, ds, None, x={"a": torch.randn(4, 10), "b": torch.randn(4, 5)})


@case("dataset items are dicts {'x','y'}", bad=True)
def _():
    roundtrip(MLP, DictItems(VEC[0]), DictItems(VEC[1]), x=VEC[1].tensors[0][:8])


@case("DataLoader instead of Dataset (bs=32, shuffle)")
def _():
    note, model, report, _ = roundtrip(MLP, DataLoader(VEC[0], batch_size=32, shuffle=True),
                                       DataLoader(VEC[1], batch_size=16))
    if report.config["batch_size"] != 32:
        raise Fail(f"batch_size {report.config['batch_size']} not the loader's 32")
    return note


@case("DataLoader with custom collate_fn")
def _():
    def coll(items):
        return (torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]))
    return roundtrip(MLP, DataLoader(VEC[0], batch_size=32, collate_fn=coll), VEC[1])[0]


@case("training set (10) smaller than batch_size (256)")
def _():
    return roundtrip(MLP, cls_data((10,), n=10), VEC[1])[0]


@case("1-sample val set")
def _():
    return roundtrip(MLP, VEC[0], cls_data((10,), n=1, seed=5))[0]


@case("val_set=None (budget default)")
def _():
    return roundtrip(MLP, VEC[0], None)[0]


@case("val_set=None, budget=False, BN model")
def _():
    return roundtrip(NormsNet, IMG[0], None, budget=False)[0]


@case("channels_last conv params")
def _():
    def prep(m):
        m.to(memory_format=torch.channels_last)
    def make():
        return seq_grouped()
    note, model, report, _ = roundtrip(make, *IMG, prep=prep,
                                       load_make=lambda: seq_grouped().to(memory_format=torch.channels_last))
    return note + f"; still channels_last: {model[0].weight.is_contiguous(memory_format=torch.channels_last)}"


@case("channels_last saved, loaded into contiguous instance")
def _():
    return roundtrip(seq_grouped, *IMG, prep=lambda m: m.to(memory_format=torch.channels_last))[0]


@case("non-contiguous Parameter (transposed tensor)")
def _():
    return roundtrip(NonContig, *VEC)[0]


@case("large weight scale (x100)")
def _():
    def prep(m):
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(100)
    return roundtrip(MLP, *VEC, prep=prep)[0]


@case("large weight scale (x100), init='range'")
def _():
    def prep(m):
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(100)
    return roundtrip(MLP, *VEC, prep=prep, init="range")[0]


@case("tiny weight scale (~1e-4)")
def _():
    def prep(m):
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1e-3)
    return roundtrip(MLP, *VEC, prep=prep)[0]


@case("float64 model")
def _():
    def ds(d):
        return TensorDataset(d.tensors[0].double(), d.tensors[1])
    return roundtrip(lambda: MLP().double(), ds(VEC[0]), ds(VEC[1]))[0]


@case("int32 labels")
def _():
    def ds(d):
        return TensorDataset(d.tensors[0], d.tensors[1].int())
    return roundtrip(MLP, ds(VEC[0]), ds(VEC[1]))[0]


@case("torch.jit.script model")
def _():
    return roundtrip(lambda: torch.jit.script(MLP()), *VEC)[0]


@case("nn.DataParallel on CPU")
def _():
    return roundtrip(lambda: nn.DataParallel(MLP()), *VEC)[0]


@case("torch.compile(backend='eager')")
def _():
    return roundtrip(lambda: torch.compile(MLP(), backend="eager"), *VEC, budget=False)[0]


@case("compress kwargs: include/exclude glob+class, cover=weights")
def _():
    note, model, report, _ = roundtrip(NormsNet, *IMG, exclude=["fc2.*", nn.Conv2d], cover="weights")
    bad = [n for n in report.covered if n.startswith(("fc2", "c.", "c2")) or n.endswith("bias")]
    if bad:
        raise Fail(f"covered despite exclude/cover: {bad}")
    return note + f"; covered {report.covered}"


@case("holdout= and lr_schedule=cosine, n_components=4")
def _():
    note, model, report, _ = roundtrip(MLP, *VEC, holdout=cls_data((10,), n=50, seed=7), lr_schedule="cosine",
                                       n_components=4)
    if "quantized_holdout_error" not in report.metrics or len(report.codebook) > 4:
        raise Fail(f"metrics {sorted(report.metrics)}, K={len(report.codebook)}")
    return note


@case("embedding max_norm only")
def _():
    return roundtrip(lambda: EmbNet(max_norm=1.0), *TOK)[0]


@case("embedding max_norm, budget=False")
def _():
    return roundtrip(lambda: EmbNet(max_norm=1.0), *TOK, budget=False)[0]


@case("embedding max_norm, val=None")
def _():
    return roundtrip(lambda: EmbNet(max_norm=1.0), TOK[0], None, x=TOK[1].tensors[0][:16])[0]


@case("embedding padding_idx only")
def _():
    note, model, report, net = roundtrip(lambda: EmbNet(padding_idx=0), *TOK)
    return note + f"; pad row still 0: {bool(model.emb.weight[0].eq(0).all())}"


@case("torch.jit.script model, budget=False")
def _():
    return roundtrip(lambda: torch.jit.script(MLP()), *VEC, budget=False)[0]


@case("torch.jit.script model, val=None")
def _():
    return roundtrip(lambda: torch.jit.script(MLP()), VEC[0], None, x=VEC[1].tensors[0][:16])[0]


@case("loop: torch.jit.script model")
def _():
    return own_loop(lambda: torch.jit.script(MLP()), VEC[0])


@case("loop: embedding max_norm")
def _():
    return own_loop(lambda: EmbNet(max_norm=1.0), TOK[0])


@case("torch.compile(backend='eager'), budget on")
def _():
    return roundtrip(lambda: torch.compile(MLP(), backend="eager"), *VEC)[0]


@case("DataLoader(drop_last=True) with BN, n=257 bs=256")
def _():
    train = DataLoader(cls_data((10,), n=257), batch_size=256, drop_last=True)
    return roundtrip(lambda: nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)),
                     train, VEC[1], epochs=1, pre=False)[0]


@case("DataLoader with a SubsetRandomSampler(50 of 200)")
def _():
    from torch.utils.data import SubsetRandomSampler
    train = DataLoader(VEC[0], batch_size=32, sampler=SubsetRandomSampler(range(50)))
    note, model, report, _ = roundtrip(MLP, train, VEC[1])
    return note + f"; n_train used {report.config['n_train']} (sampler has 50)"


@case("prune: effective sparsity vs report.nonzero_share")
def _():
    note, model, report, net = roundtrip(_pruned, *VEC)
    eff = {n: getattr(model, n.split(".")[0]).weight for n in report.covered if n.endswith("weight_orig")}
    nz = sum(int(w.ne(0).sum()) for w in eff.values())
    tot = sum(w.numel() for w in eff.values())
    orig = sum(int(model.get_parameter(n).ne(0).sum()) for n in eff)
    return note + f"; weight_orig nz {orig}/{tot}, effective (orig*mask) nz {nz}/{tot}"


# ----------------------------------------------------------------------------- cases: SoftWeightSharing loop
def own_loop(make, train, epochs=3, loss=F.cross_entropy, bs=32, recal=False, snap=False, **kw):
    kw = {"tau": 0.02, "init_sigma": 0.05, "lr_weights": 1e-3, "lr_log_precisions": 1e-2, "lr_mixing": 1e-2,
          **kw}                                    # examples/custom_training_loop.py's short-run settings
    torch.manual_seed(0)
    model = make()
    user_pretrain(model, train, loss_fn=loss if loss is not F.cross_entropy else None)
    s = sws.SoftWeightSharing(model, "tutorial", n_train=len(train), **kw)
    opt = s.optimizer()
    loader = DataLoader(train, batch_size=bs, shuffle=True)
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            out = model(**x) if isinstance(x, dict) else model(x)
            out = out[0] if isinstance(out, tuple) else out
            lv = loss(out.reshape(-1, out.shape[-1]) if out.dim() == 3 else out, y.reshape(-1) if out.dim() == 3 else y)
            opt.zero_grad()
            lv.backward()
            s.backward(epoch=epoch)
            opt.step()
    if snap:
        for x, y in loader:
            with s.snapped():
                lv = loss(model(x), y)
                opt.zero_grad()
                lv.backward()
            s.backward()
            opt.step()
    q = s.quantize_(recalibrate=train if recal else None)
    path = TMP / f"loop{len(os.listdir(TMP))}.sws"
    size = s.save(path)
    torch.manual_seed(123)
    net = sws.load(path, model=make())
    x = train.tensors[0][:16]
    model.eval()
    d = compare(model, net, x, "loaded vs quantised")
    compare_state(model, net)
    st = s.stats()["total"]
    return f"max|d|={d:.1e}; {size} B; nz {100 * st['nonzero_share']:.1f}% K={len(q.codebook)} dropped={q.dropped}"


@case("loop: lstm bidir")
def _():
    return own_loop(lambda: RNNClf(nn.LSTM), SEQ[0])


@case("loop: gru")
def _():
    return own_loop(lambda: RNNClf(nn.GRU), SEQ[0])


@case("loop: transformer encoder")
def _():
    return own_loop(TransfClf, SEQ[0])


@case("loop: tied LM")
def _():
    x = torch.randint(0, 30, (200, 8), generator=gen(0))
    return own_loop(TiedLM, TensorDataset(x, (x + 1) % 30))


@case("loop: norms + recalibrate=train")
def _():
    return own_loop(NormsNet, IMG[0], recal=True)


@case("loop: sequential grouped conv + snapped() phase")
def _():
    return own_loop(seq_grouped, IMG[0], snap=True)


@case("loop: embeddingbag")
def _():
    return own_loop(EmbBagNet, TOK[0])


@case("loop: ParameterList/Dict")
def _():
    return own_loop(ParamContainers, VEC[0])


@case("loop: mse regression")
def _():
    x = torch.randn(200, 10, generator=gen(0))
    return own_loop(lambda: MLP(out=2), TensorDataset(x, x[:, :2]), loss=F.mse_loss)


@case("loop: save before quantize_()", bad=True)
def _():
    s = sws.SoftWeightSharing(MLP(), "tutorial", n_train=100)
    s.save(TMP / "early.sws")


@case("loop: n_train=0", bad=True)
def _():
    sws.SoftWeightSharing(MLP(), "tutorial", n_train=0)


@case("loop: model fully frozen", bad=True)
def _():
    m = MLP().requires_grad_(False)
    sws.SoftWeightSharing(m, "tutorial", n_train=100)


# ----------------------------------------------------------------------------- cases: CLI
CLI_MOD = TMP / "sweep_cli_user.py"
CLI_MOD.write_text('''
import torch
from torch import nn
from torch.utils.data import TensorDataset

def build():
    return nn.Sequential(nn.Conv1d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 14, 3))

def splits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(260, 4, 16, generator=g)
    y = (x[:, 0, :4].sum(1) > 0).long()
    return TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:]), None

def build_lstm():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(16, 8, batch_first=True)
            self.fc = nn.Linear(8, 3)
        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])
    return M()

def bad_splits():
    return [1, 2, 3]
''')
sys.path.insert(0, str(TMP))


def cli(*args):
    from sws.cli import main
    err = io.StringIO()
    rc = 0
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            main(list(args))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    return rc, err.getvalue().strip().splitlines()


@case("CLI: sws run --model user:build --data user:splits")
def _():
    out = TMP / "clirun"
    rc, err = cli("run", "--model", "sweep_cli_user:build", "--data", "sweep_cli_user:splits", "--out", str(out),
                  "--pretrain-epochs", "1", "--epochs", "1", "--quiet")
    if rc not in (0, 3):
        raise Fail(f"exit {rc}: {err[-1] if err else ''}")
    import sweep_cli_user
    sws.load(out / "model.sws", model=sweep_cli_user.build())
    rc2, err2 = cli("evaluate", str(out))
    return f"exit {rc}; model.sws loads; evaluate exit {rc2}; files {sorted(p.name for p in out.iterdir())[:6]}"


@case("CLI: sws run user LSTM")
def _():
    out = TMP / "clirun2"
    rc, err = cli("run", "--model", "sweep_cli_user:build_lstm", "--data", "sweep_cli_user:splits", "--out",
                  str(out), "--pretrain-epochs", "1", "--epochs", "1", "--quiet")
    if rc not in (0, 3):
        raise Fail(f"exit {rc}: {err[-1] if err else ''}")
    return f"exit {rc}"


@case("CLI: --data returns the wrong thing", bad=True)
def _():
    rc, err = cli("run", "--model", "sweep_cli_user:build", "--data", "sweep_cli_user:bad_splits", "--out",
                  str(TMP / "clibad"), "--pretrain-epochs", "1", "--epochs", "1", "--quiet")
    if rc == 2:
        raise SwsError("exit 2: " + (err[-1] if err else ""))
    raise RuntimeError(f"exit {rc}: {err[-1] if err else ''}")


@case("CLI: --model not importable", bad=True)
def _():
    rc, err = cli("run", "--model", "nope_mod:build", "--data", "sweep_cli_user:splits", "--out",
                  str(TMP / "clibad2"), "--epochs", "1", "--quiet")
    if rc == 2:
        raise SwsError("exit 2: " + (err[-1] if err else ""))
    raise RuntimeError(f"exit {rc}: {err[-1] if err else ''}")


# ----------------------------------------------------------------------------- cases: bad inputs
@case("NaN in the training data", bad=True)
def _():
    x, y = VEC[0].tensors
    x = x.clone()
    x[3, 2] = float("nan")
    roundtrip(MLP, TensorDataset(x, y), VEC[1])


@case("NaN in the validation data", bad=True)
def _():
    x, y = VEC[1].tensors
    x = x.clone()
    x[3, 2] = float("nan")
    return roundtrip(MLP, VEC[0], TensorDataset(x, y))[0]


@case("NaN weight in the model", bad=True)
def _():
    def prep(m):
        with torch.no_grad():
            m.fc2.weight[0, 0] = float("nan")
    roundtrip(MLP, *VEC, prep=prep)


@case("inf weight in the model, budget=False", bad=True)
def _():
    def prep(m):
        with torch.no_grad():
            m.fc2.weight[0, 0] = float("inf")
    roundtrip(MLP, *VEC, prep=prep, budget=False)


@case("labels out of range (5 with 3 classes)", bad=True)
def _():
    x, y = VEC[0].tensors
    y = y.clone()
    y[0] = 5
    roundtrip(MLP, TensorDataset(x, y), VEC[1])


@case("negative label -1", bad=True)
def _():
    x, y = VEC[0].tensors
    y = y.clone()
    y[0] = -1
    roundtrip(MLP, TensorDataset(x, y), VEC[1])


@case("labels out of range only in val", bad=True)
def _():
    x, y = VEC[1].tensors
    y = y.clone()
    y[0] = 7
    roundtrip(MLP, VEC[0], TensorDataset(x, y))


@case("empty training set", bad=True)
def _():
    roundtrip(MLP, TensorDataset(torch.zeros(0, 10), torch.zeros(0).long()), VEC[1])


@case("empty val set", bad=True)
def _():
    roundtrip(MLP, VEC[0], TensorDataset(torch.zeros(0, 10), torch.zeros(0).long()))


@case("model with no parameters", bad=True)
def _():
    roundtrip(NoParams, *VEC)


@case("wrong preset name", bad=True)
def _():
    sws.compress(MLP(), *VEC, "tutorail", epochs=1)


@case("negative epochs", bad=True)
def _():
    sws.compress(MLP(), *VEC, "tutorial", epochs=-1)


@case("misspelt keyword (epoch=2)", bad=True)
def _():
    sws.compress(MLP(), *VEC, "tutorial", epoch=2)


@case("n_components=1", bad=True)
def _():
    sws.compress(MLP(), *VEC, "tutorial", epochs=1, n_components=1)


@case("float16 model", bad=True)
def _():
    sws.compress(MLP().half(), *VEC, "tutorial", epochs=1)


@case("bool buffer in the model", bad=True)
def _():
    sws.compress(BoolBuf(), *VEC, "tutorial", epochs=1)


@case("float inputs of the wrong width", bad=True)
def _():
    sws.compress(MLP(inp=7), *VEC, "tutorial", epochs=1)


@case("targets of the wrong shape (n,1) long", bad=True)
def _():
    x, y = VEC[0].tensors
    sws.compress(MLP(), TensorDataset(x, y[:, None]), None, "tutorial", epochs=1)


@case("float class labels (n,) 0./1./2.", bad=True)
def _():
    x, y = VEC[0].tensors
    sws.compress(MLP(), TensorDataset(x, y.float()), None, "tutorial", epochs=1)


@case("RetrainConfig plus an override keyword", bad=True)
def _():
    sws.compress(MLP(), *VEC, sws.retrain_config("tutorial"), epochs=1)


@case("loss_fn returning a non-scalar (reduction='none')", bad=True)
def _():
    sws.compress(MLP(), *VEC, "tutorial", epochs=1, loss_fn=nn.CrossEntropyLoss(reduction="none"))


@case("train is a plain list of (x, y) pairs")
def _():
    x, y = VEC[0].tensors
    data = [(x[i], y[i]) for i in range(len(y))]
    return roundtrip(MLP, data, VEC[1])[0]


@case("train is a generator / iterable", bad=True)
def _():
    x, y = VEC[0].tensors
    sws.compress(MLP(), ((x[i], y[i]) for i in range(10)), None, "tutorial", epochs=1)


@case("out= in a non-existent directory", bad=True)
def _():
    t0 = time.perf_counter()
    try:
        sws.compress(MLP(), *VEC, "tutorial", epochs=2, out=TMP / "no" / "such" / "m.sws")
    except Exception as e:
        e.args = (f"[after {time.perf_counter() - t0:.1f}s of training] " + str(e),)
        raise


@case("out= an existing file (overwritten?)", bad=True)
def _():
    p = TMP / "existing.sws"
    p.write_bytes(b"precious data")
    sws.compress(MLP(), *VEC, "tutorial", epochs=1, out=p)
    return f"overwritten silently: {p.read_bytes()[:4]!r} (was b'prec')" if p.read_bytes() != b"precious data" \
        else "left alone"


@case("out= an existing directory", bad=True)
def _():
    p = TMP / "adir"
    p.mkdir()
    sws.compress(MLP(), *VEC, "tutorial", epochs=1, out=p)


@case("load into a different architecture", bad=True)
def _():
    p = TMP / "arch.sws"
    sws.compress(MLP(), *VEC, "tutorial", epochs=1, out=p, budget=False)
    sws.load(p, model=mlp(hid=8))


@case("load a user file without model=", bad=True)
def _():
    p = TMP / "arch2.sws"
    sws.compress(MLP(), *VEC, "tutorial", epochs=1, out=p, budget=False)
    sws.load(p)


@case("weight_norm parametrization", bad=True)
def _():
    m = MLP()
    m.fc1 = torch.nn.utils.parametrizations.weight_norm(m.fc1)
    sws.compress(m, *VEC, "tutorial", epochs=1)


# ----------------------------------------------------------------------------- runner
def sws_frame(tb):
    """The deepest frame inside the sws package: 'file.py:line (function)'."""
    best = None
    for fr in traceback.extract_tb(tb):
        if "/src/sws/" in fr.filename:
            best = f"{fr.filename.split('/src/')[-1]}:{fr.lineno} ({fr.name})"
    return best or "-"


def main(filters):
    rows = []
    for name, bad, fn in CASES:
        if filters and not any(f in name for f in filters):
            continue
        t0 = time.perf_counter()
        buf = io.StringIO()
        try:
            with redirect_stdout(buf), warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                note = fn()
            wn = sorted({x.category.__name__ + ("" if x.category.__name__ == "BudgetWarning"
                                                 else "(" + str(x.message).splitlines()[0][:90] + ")")
                         for x in w if issubclass(x.category, (UserWarning, RuntimeWarning))})
            status = "ACCEPTED" if bad else "PASS"
            detail = (note or "") + (f" [warnings: {','.join(wn)}]" if wn else "")
        except Fail as e:
            status, detail = "FAIL", f"Fail: {e}"
        except Exception as e:  # noqa: BLE001
            msg = (str(e).strip().splitlines() or [""])[-1]
            where = sws_frame(e.__traceback__)
            clean = isinstance(e, SwsError)
            status = ("CLEAN-ERROR" if clean else "UGLY-ERROR") if bad else "FAIL"
            detail = f"{type(e).__module__}.{type(e).__name__}: {msg[:300]} @ {where}"
            if not bad and os.environ.get("SWEEP_TB"):
                traceback.print_exc()
        dt = time.perf_counter() - t0
        rows.append((status, name, dt, detail))
        print(f"{status:12s} {dt:6.1f}s  {name}\n               {detail}", flush=True)
    print("\n" + "=" * 100)
    for s in ("PASS", "FAIL", "CLEAN-ERROR", "UGLY-ERROR", "ACCEPTED"):
        print(f"{s:12s} {sum(r[0] == s for r in rows)}")


if __name__ == "__main__":
    main(sys.argv[1:])

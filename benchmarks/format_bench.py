"""Benchmark the .sws file format on run folders (issue 3).

For each RUN_DIR holding a quantized checkpoint: encode time, file size and the
three compression rates, decode time from file to ``nn.Module``, a bit-exact
check against the checkpoint, test accuracy (with --data-dir), and inference
from the dense weights against a sparse (CSR) form at batch 1 and 256.

Usage::

    python benchmarks/format_bench.py RUN_DIR [RUN_DIR ...] [--data-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sws
from sws.format import container as fileformat
from sws.format.stats import file_stats
from sws.runs.rundir import RunDir
from sws.runs.stages import evaluate_file


def best_of(fn, repeat: int, number: int = 1) -> float:
    """Smallest mean seconds per call over ``repeat`` rounds of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


class SparseLinear(nn.Module):
    """y = x W^T + b with W in CSR form (torch.sparse)."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.w = lin.weight.detach().to_sparse_csr()
        self.b = lin.bias.detach()

    def forward(self, x):
        return torch.sparse.mm(self.w, x.T).T + self.b


class SparseConv2d(nn.Module):
    """Convolution as im2col (unfold) and a CSR matrix product; stride 1, no padding."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        assert conv.stride == (1, 1) and conv.padding == (0, 0) and conv.dilation == (1, 1)
        self.k = conv.kernel_size
        self.out = conv.out_channels
        self.w = conv.weight.detach().reshape(self.out, -1).to_sparse_csr()
        self.b = conv.bias.detach()

    def forward(self, x):
        n, _, h, w = x.shape
        cols = F.unfold(x, self.k)                      # (n, c*kh*kw, L)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)
        y = torch.sparse.mm(self.w, cols) + self.b[:, None]
        oh, ow = h - self.k[0] + 1, w - self.k[1] + 1
        return y.reshape(self.out, n, oh, ow).transpose(0, 1)


def sparse_copy(model: nn.Sequential) -> nn.Sequential:
    layers = []
    for m in model:
        if isinstance(m, nn.Linear):
            m = SparseLinear(m)
        elif isinstance(m, nn.Conv2d) and m.stride == (1, 1) and m.padding == (0, 0):
            m = SparseConv2d(m)
        layers.append(m)
    return nn.Sequential(*layers).eval()


def bench_run(run_dir: Path, data_dir, threads: int) -> dict:
    run = RunDir.open(run_dir)
    tensors, meta = run.load("quantized")
    out = Path(tempfile.mkdtemp()) / "model.sws"
    args = dict(model=meta["model"], input_norm=meta.get("input_norm", "none"),
                codebook=meta["codebook"], quantized=meta["covered"])
    blob = fileformat.encode(tensors, meta["codebook"], meta["covered"],
                             {"name": args["model"], "input_norm": args["input_norm"]})
    encode_s = best_of(lambda: fileformat.encode(tensors, meta["codebook"], meta["covered"],
                                                 {"name": args["model"],
                                                  "input_norm": args["input_norm"]}), 5)
    size = sws.save(out, tensors, name=args['model'], input_norm=args['input_norm'],
                    codebook=args['codebook'], quantized=args['quantized'])
    assert size == len(blob)
    decode_s = best_of(lambda: sws.load(out), 10)
    model = sws.load(out)
    state = model.state_dict()
    exact = all(state[k].numpy().tobytes() == v.numpy().tobytes() for k, v in tensors.items())
    stats = file_stats(out.read_bytes())
    t = stats["total"]
    res = {"run": str(run_dir), "model": meta["model"], "file_bytes": t["file_bytes"],
           "header_bytes": t["header_bytes"], "values": t["values"],
           "paper_bytes": round(t["paper_bytes"]), "entropy_bytes": round(t["entropy_bytes"]),
           "cr_file": t["cr_file"], "cr_paper": t["cr_paper"], "cr_entropy": t["cr_entropy"],
           "file_vs_paper": t["file_bytes"] / t["paper_bytes"] - 1,
           "encode_ms": 1e3 * encode_s, "decode_ms": 1e3 * decode_s, "bit_exact": exact,
           "nonzero": sum(r["nonzero"] or 0 for r in stats["layers"]),
           "gap_bits": {r["name"]: r["gap_bits"] for r in stats["layers"] if r["gap_bits"]}}
    if data_dir:
        res["test_accuracy"] = evaluate_file(out, data_dir)["model"]["accuracy"]
    torch.set_num_threads(threads)
    sparse = sparse_copy(model)
    with torch.no_grad():
        for batch in (1, 256):
            x = torch.rand(batch, 1, 28, 28)
            assert torch.allclose(model(x), sparse(x), atol=1e-4)
            number = 200 if batch == 1 else 10
            res[f"dense_b{batch}_ms"] = 1e3 * best_of(lambda: model(x), 5, number)
            res[f"sparse_b{batch}_ms"] = 1e3 * best_of(lambda: sparse(x), 5, number)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    results = [bench_run(r, a.data_dir, a.threads) for r in a.runs]
    for r in results:
        print(json.dumps(r, indent=1))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

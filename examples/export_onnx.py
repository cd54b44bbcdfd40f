"""Export .sws files to ONNX, run them in ONNX Runtime and compare with PyTorch: file sizes of the
dense graph and of the codebook-gather graph (raw and deflated, as in a zip), ONNX Runtime's load
and inference times, and the outputs' agreement on the MNIST test set (random images without it).

    .venv/bin/python examples/export_onnx.py                          # the Table 1 files
    .venv/bin/python examples/export_onnx.py runs/l5/model.sws --out-dir onnx/

The same from the command line: ``sws export FILE.sws --onnx OUT.onnx [--gather]``.
Needs ``pip install 'sws[onnx]'``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import sws

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT / "benchmarks" / "table1" / f for f in (
    "lenet-300-100-sws-pi0-9998.sws", "lenet-5-caffe-sws-tau-2e-2-cos-pi0-999.sws",
    "lenet-5-caffe-deep-compression.sws")]


def images(data_dir):
    """MNIST test images in [0, 1] and labels, or 2000 random images (labels None)."""
    try:
        _, _, test = sws.load_mnist(data_dir) if data_dir else sws.load_mnist()
        x, y = test.tensors
        return x.float(), y
    except Exception as e:      # no data here: random images still compare the outputs
        print(f"(MNIST unavailable: {str(e).splitlines()[0]}; comparing on random images)")
        return torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0)), None


def ort_run(path, x, batch=1000):
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = np.concatenate([session.run(["logits"], {"input": x[i:i + batch].numpy()})[0]
                          for i in range(0, len(x), batch)])
    return out, load, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, default=DEFAULT, help=".sws files of reference nets")
    ap.add_argument("--out-dir", type=Path, default=None, help="keep the .onnx files here [a temporary folder]")
    ap.add_argument("--data-dir", default=os.environ.get("SWS_DATA_DIR"), help="MNIST folder [$SWS_DATA_DIR]")
    args = ap.parse_args()
    x, y = images(args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in args.files:
            net = sws.load(f)
            t0 = time.perf_counter()
            with torch.no_grad():
                want = torch.cat([net(x[i:i + 1000]) for i in range(0, len(x), 1000)])
            torch_s = time.perf_counter() - t0
            row = {"file": f.name, "sws": f.stat().st_size, "torch_s": torch_s}
            for layout in ("dense", "gather"):
                out = out_dir / f"{f.stem}.{layout}.onnx"
                t0 = time.perf_counter()
                info = sws.export_onnx(f, out, gather=layout == "gather")
                export_s = time.perf_counter() - t0
                data = out.read_bytes()
                got, load_s, run_s = ort_run(out, x)
                diff = float(np.abs(got - want.numpy()).max())
                acc = float((got.argmax(1) == y.numpy()).mean()) if y is not None else float("nan")
                g = info["gather"]
                row[layout] = {"bytes": len(data), "deflated": len(zlib.compress(data, 9)), "export_s": export_s,
                               "load_s": load_s, "run_s": run_s, "max_diff": diff, "accuracy": acc,
                               "bits": g["index_bits"] if g else 32, "opset": info["opset"]}
            if y is not None:
                row["torch_accuracy"] = float((want.argmax(1) == y).float().mean())
            rows.append(row)
    n = len(x)
    print(f"| file | .sws bytes | ONNX dense bytes (deflated) | ONNX gather bytes (deflated) | index bits | "
          f"max abs diff dense / gather | accuracy torch / ORT | ORT load s dense / gather | "
          f"ORT {n} images s dense / gather | torch s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        d, g = r["dense"], r["gather"]
        print(f"| {r['file']} | {r['sws']} | {d['bytes']} ({d['deflated']}) | {g['bytes']} ({g['deflated']}) | "
              f"{g['bits']} | {d['max_diff']:.1e} / {g['max_diff']:.1e} | "
              f"{r.get('torch_accuracy', float('nan')):.4f} / {g['accuracy']:.4f} | "
              f"{d['load_s']:.3f} / {g['load_s']:.3f} | {d['run_s']:.3f} / {g['run_s']:.3f} | {r['torch_s']:.3f} |")


if __name__ == "__main__":
    main()

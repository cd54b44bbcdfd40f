"""Format version 3 against version 2 on every committed ``.sws`` file (issue 14, "Coding").

Each file is decoded and its tensors written again as version 2 (the same bytes as the
committed file) and as version 3, and the levers are taken apart: the header (binary instead
of deflated JSON, varint preamble), the code tables (none: the coder adapts), the coder on the
whole matrix and on the live submatrix.  Then encode and decode times of LeNet-5-Caffe and of a
synthetic 10-M-value sparse layer, with the C coder and the Python one.  Prints markdown.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/format_v3_bench.py [--json OUT]
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
import torch

from sws.format import container as ff
from sws.format import livecode, rangecoder
from sws.format.stats import file_stats

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted(glob.glob(str(ROOT / "benchmarks/runs/defaults/*/model.sws"))) + \
    sorted(glob.glob(str(ROOT / "benchmarks/table1/*.sws")))


def _args(d):
    return d.tensors, d.codebook, [h["name"] for h in d.header["tensors"] if h["coding"] != "raw"], \
        d.header["model"]


def _whole_matrix_bytes(d) -> int:
    """Payload of the sparse tensors range coded over the whole matrix (no live lists)."""
    total = 0
    for h in d.header["tensors"]:
        if h["coding"] == "raw":
            continue
        idx = ff._codebook_indices(h["name"], d.tensors[h["name"]], d.codebook)
        pos = np.flatnonzero(idx)
        if pos.size:
            s = rangecoder.encode([], [], pos, idx[pos], d.codebook.size)
            total += max(len(s), -(-pos.size * livecode.BITS_PER_ENTRY // 8))
    return total


def compare(path: str) -> dict:
    data = Path(path).read_bytes()
    d = ff.decode(data)
    v2 = ff.encode(*_args(d), version=2)
    v3 = ff.encode(*_args(d))
    e = ff.decode(v3)
    exact = all(e.tensors[k].numpy().tobytes() == v.numpy().tobytes() and e.tensors[k].dtype == v.dtype
                for k, v in d.tensors.items()) and e.header["model"] == d.header["model"]
    s2, s3 = file_stats(v2), file_stats(v3)
    raw = sum(r["bits"] for r in s2["layers"] if r["coding"] == "raw") // 8
    tables = sum(r["table_bits"] for r in s2["layers"]) // 8
    sparse2 = s2["total"]["payload_bytes"] - raw
    n = s2["total"]["values"]
    name = Path(path).parent.name if "defaults" in path else Path(path).name
    return {"file": name, "committed_bytes": len(data), "v2_bytes": len(v2), "v3_bytes": len(v3),
            "same_as_committed": v2 == data, "bit_exact": exact,
            "cr_v2": 32 * n / (8 * len(v2)), "cr_v3": 32 * n / (8 * len(v3)),
            "v2_header": s2["total"]["header_bytes"] + 4, "v3_header": s3["total"]["header_bytes"] + 4,
            "v2_tables": tables, "v2_streams": sparse2 - tables, "v3_whole_matrix": _whole_matrix_bytes(d),
            "v3_live": s3["total"]["payload_bytes"] - raw, "raw": raw,
            "entropy_v2": s2["total"]["entropy_bytes"], "entropy_v3": s3["total"]["entropy_bytes"]}


def best_of(fn, repeat=5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def timings() -> list[dict]:
    lenet = ff.decode((ROOT / "benchmarks/runs/defaults/lenet-5-caffe/model.sws").read_bytes())
    rng = np.random.default_rng(0)
    cb = np.concatenate([[0.0], np.linspace(-0.2, 0.2, 16)[np.linspace(-0.2, 0.2, 16) != 0]]).astype(np.float32)
    idx = np.where(rng.random((2500, 4000)) < 0.02, rng.integers(1, cb.size, (2500, 4000)), 0)
    big = {"w": torch.from_numpy(cb[idx])}
    cases = [("LeNet-5-Caffe (431k values)", _args(lenet)), ("synthetic 2500x4000, 2 % non-zero", (big, cb, ["w"],
                                                                                           {"name": "x"}))]
    out = []
    for label, args in cases:
        for version, use_c in ((2, None), (3, True), (3, False)):
            if use_c and not rangecoder.c_available():
                continue
            saved = rangecoder._lib
            if use_c is False:
                rangecoder._lib = None
            try:
                blob = ff.encode(*args, version=version)
                reps = 1 if use_c is False and "synthetic" in label else 5
                enc = best_of(lambda: ff.encode(*args, version=version), reps)
                dec = best_of(lambda: ff.decode(blob, max_elements=1 << 26), reps)
            finally:
                rangecoder._lib = saved
            out.append({"case": label, "version": version,
                        "coder": "-" if version == 2 else ("C" if use_c else "Python"),
                        "bytes": len(blob), "encode_ms": 1e3 * enc, "decode_ms": 1e3 * dec})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    rows = [compare(f) for f in FILES]
    print("| file | v2 bytes | v3 bytes | change | CR v2 | CR v3 | header v2 -> v3 | v2 tables | "
          "v2 streams | v3 whole matrix | v3 live submatrix | entropy v3 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['file']} | {r['v2_bytes']:,} | {r['v3_bytes']:,} | {r['v3_bytes'] / r['v2_bytes'] - 1:+.1%} | "
              f"{r['cr_v2']:.1f} | {r['cr_v3']:.1f} | {r['v2_header']} -> {r['v3_header']} | {r['v2_tables']:,} | "
              f"{r['v2_streams']:,} | {r['v3_whole_matrix']:,} | {r['v3_live']:,} | {r['entropy_v3']:,.0f} |")
    t = {k: sum(r[k] for r in rows) for k in ("v2_bytes", "v3_bytes", "v2_header", "v3_header", "v2_tables",
                                               "v2_streams", "v3_whole_matrix", "v3_live")}
    print(f"| **all {len(rows)} files** | {t['v2_bytes']:,} | {t['v3_bytes']:,} | "
          f"{t['v3_bytes'] / t['v2_bytes'] - 1:+.1%} | | | {t['v2_header']:,} -> {t['v3_header']:,} | "
          f"{t['v2_tables']:,} | {t['v2_streams']:,} | {t['v3_whole_matrix']:,} | {t['v3_live']:,} | |")
    print(f"\nall v2 re-encodings identical to the committed files: {all(r['same_as_committed'] for r in rows)}; "
          f"all v3 round trips bit-exact: {all(r['bit_exact'] for r in rows)}\n")
    tim = timings()
    print("| case | version | coder | bytes | encode ms | decode ms |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for r in tim:
        print(f"| {r['case']} | {r['version']} | {r['coder']} | {r['bytes']:,} | {r['encode_ms']:.1f} | "
              f"{r['decode_ms']:.1f} |")
    if a.json:
        a.json.write_text(json.dumps({"files": rows, "timings": tim}, indent=1) + "\n")


if __name__ == "__main__":
    main()

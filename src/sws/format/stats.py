"""What a ``.sws`` file spends its bits on, and three compression rates (SPEC section 5).

* **file**: CR = 32 N / (8 * file bytes), N = number of stored values
  (every tensor's elements): the rate this project reports.
* **paper**: Han et al.'s accounting as the paper uses it: per quantised layer
  the Huffman-coded gaps in a fixed width (8 bits for conv kernels, 5 for the
  rest) with fillers, plus the Huffman-coded codebook indices; code tables,
  header and checksum not counted; the codebook once in 32-bit floats; other
  tensors at their raw size.
* **entropy**: the file's own symbols at their empirical (zeroth-order) entropy,
  n * H(symbols), no tables or header; codebook and raw tensors as in the paper's
  accounting.  Version 1-2: the gap stream (its chosen gap width) and the index stream;
  no code over these symbols, taken one at a time, is shorter.  Version 3: the gaps in
  the live submatrix (each gap value a symbol), the indices, and the live rows and
  columns as bit masks; version 3's adaptive coder learns as it goes, so it may come out
  above this bound (the cost of learning) or below it (the probabilities it adapts).
"""

from __future__ import annotations

import math

import numpy as np

from sws.format import huffman, livecode, sparsecode
from sws.format.container import _payload_size, read_header, sparse_entries

__all__ = ["file_stats", "format_stats"]

PAPER_GAP_BITS = {"conv": 8, "fc": 5}


def _entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum()) if n else 0.0


def _huffman_bits(counts: np.ndarray) -> int:
    """Bits of the stream with these symbol counts under its length-limited Huffman code."""
    used = counts[counts > 0]           # in symbol order: the code's tie-breaking is kept
    return huffman.coded_bits(used, huffman.code_lengths(used)) if used.size else 0


def _binary_entropy_bits(k: int, n: int) -> float:
    """n H(k / n): a mask of k ones among n bits at its entropy."""
    if k <= 0 or k >= n:
        return 0.0
    p = k / n
    return -n * (p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _live_entropy_bits(pos: np.ndarray, idx: np.ndarray, h: dict) -> float:
    """Entropy bound of a version 3 tensor's symbols (module docstring)."""
    R, C = livecode.matrix_shape(h["shape"])
    r, c = h["live_rows"], h["live_cols"]
    i, j = np.divmod(pos, C)
    ri = np.searchsorted(np.unique(i), i) if r < R else i
    cj = np.searchsorted(np.unique(j), j) if c < C else j
    q = ri * c + cj
    gaps = np.diff(q, prepend=-1) - 1
    return (_entropy_bits(np.unique(gaps, return_counts=True)[1]) + _entropy_bits(np.bincount(idx))
            + _binary_entropy_bits(r, R) + _binary_entropy_bits(c, C) * (len(h["shape"]) >= 2))


def _counts(pos, idx, gap_bits: int, n_index: int):
    """(gap counts, index counts) of the streams at this gap width, as arrays; for a few
    entries the used symbols only, in symbol order (all the bit counts below need)."""
    if len(pos) > 64:
        return sparsecode.stream_counts_at(pos, idx, gap_bits, n_index)
    top, prev, fill = (1 << gap_bits) - 1, -1, 0
    gc, ic = {}, {}
    for p, i in zip(pos.tolist(), idx.tolist()):
        g, prev = p - prev - 1, p
        fill += g >> gap_bits
        gc[g & top] = gc.get(g & top, 0) + 1
        ic[i] = ic.get(i, 0) + 1
    if fill:
        gc[top] = gc.get(top, 0) + fill
        ic[0] = ic.get(0, 0) + fill
    return (np.array([gc[k] for k in sorted(gc)], dtype=np.int64),
            np.array([ic[k] for k in sorted(ic)], dtype=np.int64))


def _header_length(data, version: int) -> int:
    from sws.format.container import _lengths
    return _lengths(memoryview(data), version)[1]


def file_stats(data: bytes, *, max_elements: int | None = None) -> dict:
    """Per-tensor and total bit counts and compression rates of a ``.sws`` file's bytes.

    Works from each tensor's entries, never from the tensor itself: time and memory are
    bounded by the file's bytes whatever the shapes it declares, so the values are not
    limited here; ``max_elements`` bounds the number of tensors (``read_header``).
    """
    header, cb, payload = read_header(data, max_elements=max_elements)
    k = len(cb)
    rows, offset = [], 0
    n_total = paper_bits = entropy_bits = 0
    for h in header["tensors"]:
        n = math.prod(h["shape"])
        n_total += n
        if h["coding"] == "raw":
            size = _payload_size(h)
            rows.append({"name": h["name"], "shape": h["shape"], "coding": "raw", "size": n,
                         "nonzero": None, "gap_bits": None, "live": None, "stream_bits": 0,
                         "table_bits": 0, "raw_bits": 8 * size,
                         "bits": 8 * size, "cr": 32 * n / max(8 * size, 1)})
            paper_bits += 8 * size
            entropy_bits += 8 * size
            offset += size
            continue
        size = _payload_size(h)
        pos, idx = sparse_entries(payload[offset:offset + size], h, k)
        offset += size
        v3 = h["coding"] == "sparse-range"
        if pos.size:
            if v3:
                entropy_bits += _live_entropy_bits(pos, idx, h)
            else:
                gc, ic = _counts(pos, idx, h["gap_bits"], k)
                entropy_bits += _entropy_bits(gc) + _entropy_bits(ic)
            pb = PAPER_GAP_BITS["conv" if len(h["shape"]) == 4 else "fc"]
            pgc, pic = _counts(pos, idx, pb, k)
            paper_bits += _huffman_bits(pgc) + _huffman_bits(pic)
        if v3:
            tables, streams = 0, {"stream_bits": 8 * size, "live": [h["live_rows"], h["live_cols"]],
                                  "gap_bits": None, "entries": h["entries"]}
        else:
            tables = 4 * (h["gap_symbols"] + (h["gap_symbols"] % 2)
                          + h["index_symbols"] + (h["index_symbols"] % 2))
            streams = {"stream_bits": h["gap_stream_bits"] + h["index_stream_bits"], "live": None,
                       "gap_bits": h["gap_bits"], "entries": h["entries"],
                       "gap_stream_bits": h["gap_stream_bits"],
                       "index_stream_bits": h["index_stream_bits"]}
        bits = 8 * size
        rows.append({"name": h["name"], "shape": h["shape"], "coding": "sparse", "size": n,
                     "nonzero": int(pos.size), **streams, "table_bits": tables,
                     "raw_bits": 0, "bits": bits, "cr": 32 * n / max(bits, 1)})
    paper_bits += 32 * k
    entropy_bits += 32 * k
    version = int.from_bytes(bytes(data[8:12]), "little")
    preamble = len(data) - len(payload) - 4 - _header_length(data, version)
    return {"model": header["model"], "codebook": cb.tolist(), "layers": rows, "version": version,
            "total": {"values": n_total, "file_bytes": len(data),
                      "header_bytes": len(data) - len(payload) - 4,
                      "preamble_and_checksum_bytes": preamble + 4,
                      "payload_bytes": len(payload), "paper_bytes": paper_bits / 8,
                      "entropy_bytes": entropy_bits / 8,
                      "cr_file": 32 * n_total / (8 * len(data)),
                      "cr_paper": 32 * n_total / paper_bits,
                      "cr_entropy": 32 * n_total / entropy_bits}}


def format_stats(s: dict) -> str:
    """The per-layer table and totals that ``sws inspect`` prints."""
    lines = [f"model {s['model'].get('name')}  input_norm {s['model'].get('input_norm', 'none')}  "
             f"codebook {len(s['codebook'])} values  format version {s.get('version', '?')}",
             f"{'tensor':<12}{'shape':>12}{'non-zero':>10}{'live':>12}{'gap w':>6}{'stream bits':>12}"
             f"{'tables':>8}{'raw bits':>10}{'CR':>9}"]
    for r in s["layers"]:
        shape = "x".join(map(str, r["shape"])) or "scalar"
        nz = "-" if r["nonzero"] is None else str(r["nonzero"])
        gw = "-" if r["gap_bits"] is None else str(r["gap_bits"])
        live = "-" if not r.get("live") else "x".join(map(str, r["live"]))
        lines.append(f"{r['name']:<12}{shape:>12}{nz:>10}{live:>12}{gw:>6}{r['stream_bits']:>12}"
                     f"{r['table_bits']:>8}{r['raw_bits']:>10}{r['cr']:>9.1f}")
    t = s["total"]
    lines += [f"codebook: {len(s['codebook'])} x 32 bits in the header; header {t['header_bytes']} "
              f"bytes (preamble and checksum {t['preamble_and_checksum_bytes']}), payload "
              f"{t['payload_bytes']} bytes",
              f"{'':<12}{'file':>12}{'paper':>12}{'entropy':>12}",
              f"{'bytes':<12}{t['file_bytes']:>12}{t['paper_bytes']:>12.0f}{t['entropy_bytes']:>12.0f}",
              f"{'CR':<12}{t['cr_file']:>12.1f}{t['cr_paper']:>12.1f}{t['cr_entropy']:>12.1f}",
              f"(CR = 32 x {t['values']} values / bits; file: the file's bytes; paper: Deep "
              "Compression accounting; entropy: the file's symbols at their zeroth-order entropy)"]
    return "\n".join(lines)

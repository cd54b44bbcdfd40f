"""What richer contexts could save in a .sws file's coding (issue 14, the coding lever): adaptive
(Krichevsky-Trofimov) code lengths of each sparse tensor's live submatrix under a few models.

Usage: python benchmarks/context_gain.py FILE.sws

Per tensor: the codebook indices of the non-zeros with one context, with the previous index as
context, with the row as context; the positions as one adaptive bit per live cell, and with the
column's count so far (capped at 7) and first row or not as context.  Estimates, not a coder.
"""

import math
import sys
from collections import defaultdict

import numpy as np

from sws.format import container


def adaptive_bits(symbols, contexts, k):
    counts = defaultdict(lambda: np.full(k, 0.5))
    bits = 0.0
    for s, c in zip(symbols, contexts):
        p = counts[c]
        bits -= math.log2(p[s] / p.sum())
        p[s] += 1
    return bits


def main():
    d = container.read(sys.argv[1])
    cb = np.asarray(d.codebook)
    for name, t in d.tensors.items():
        t = np.asarray(t)
        if t.ndim < 2:
            continue
        m = t.reshape(t.shape[0], -1)
        idx = np.abs(m[..., None] - cb[None, None, :]).argmin(-1)
        rows, cols = np.flatnonzero((idx != 0).any(1)), np.flatnonzero((idx != 0).any(0))
        live = idx[np.ix_(rows, cols)]
        nz = np.flatnonzero(live.ravel())
        vals = live.ravel()[nz]
        plain = adaptive_bits(vals, [0] * len(vals), len(cb))
        prev = adaptive_bits(vals, np.r_[0, vals[:-1]], len(cb))
        row = adaptive_bits(vals, nz // live.shape[1], len(cb))
        cells = (live != 0).astype(int)
        one = [0.5, 0.5]
        by_col = defaultdict(lambda: [0.5, 0.5])
        col_count = np.zeros(cells.shape[1])
        b_one = b_col = 0.0
        for i in range(cells.shape[0]):
            for j in range(cells.shape[1]):
                s = cells[i, j]
                b_one -= math.log2(one[s] / sum(one))
                one[s] += 1
                q = by_col[(min(int(col_count[j]), 7), min(i, 1))]
                b_col -= math.log2(q[s] / sum(q))
                q[s] += 1
                col_count[j] += s
        print(f"{name:10s} n={len(vals):6d} live {cells.shape[0]}x{cells.shape[1]}  indices: one context "
              f"{plain / 8:7.0f} B, previous index {prev / 8:7.0f} B, row {row / 8:7.0f} B;  positions: "
              f"per cell {b_one / 8:7.0f} B, column context {b_col / 8:7.0f} B")


if __name__ == "__main__":
    main()

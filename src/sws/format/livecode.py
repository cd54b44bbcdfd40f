"""One quantised tensor in format version 3: its live submatrix, range coded.

The tensor is read as a matrix (rows = the first dimension, a conv kernel ``(out, in, kh, kw)``
as ``(out, in * kh * kw)``; a vector or a scalar as one row).  A row or column is *live* when it
holds a non-zero.  The stream (``sws.format.rangecoder``) codes the live rows and the live
columns when not all are live (a vector's columns are taken as all live), then every non-zero
as its position in the live submatrix, row-major, and its codebook index.  Work and memory of
decoding are proportional to the entries, which the header bounds by the stream's bytes.
"""

from __future__ import annotations

import math

import numpy as np

from sws.format import rangecoder

__all__ = ["BITS_PER_ENTRY", "matrix_shape", "encode_tensor", "check_fields", "decode_entries"]

BITS_PER_ENTRY = 2   # a stream has at least 2 bits an entry (padded with zero bytes if need be)


def matrix_shape(shape) -> tuple[int, int]:
    """(rows, columns) of the matrix a tensor of this shape is read as."""
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def encode_tensor(indices: np.ndarray, shape, n_index: int, *, use_c: bool | None = None
                  ) -> tuple[dict, bytes]:
    """(header fields, stream) of a tensor given the codebook index of every element."""
    R, C = matrix_shape(shape)
    flat = np.flatnonzero(indices)
    n = int(flat.size)
    if n == 0:
        return {"entries": 0, "live_rows": 0, "live_cols": 0, "stream_bytes": 0}, b""
    row, col = np.divmod(flat, C)
    row_live = np.zeros(R, dtype=bool)
    row_live[row] = True
    if len(shape) < 2:
        col_live = np.ones(C, dtype=bool)
    else:
        col_live = np.zeros(C, dtype=bool)
        col_live[col] = True
    rows, cols = np.flatnonzero(row_live), np.flatnonzero(col_live)
    r, c = rows.size, cols.size
    row_rank = np.cumsum(row_live) - 1
    col_rank = np.cumsum(col_live) - 1
    pos = row_rank[row] * c + col_rank[col]
    stream = rangecoder.encode(rows if r < R else rows[:0], cols if c < C else cols[:0], pos,
                               indices[flat], n_index, use_c=use_c)
    need = -(-n * BITS_PER_ENTRY // 8)
    if len(stream) < need:
        stream += bytes(need - len(stream))
    return {"entries": n, "live_rows": r, "live_cols": c, "stream_bytes": len(stream)}, stream


def check_fields(h: dict, n_index: int) -> str | None:
    """What is wrong with a sparse tensor's header fields, or None: checked against its shape
    and its stream's bytes before anything is decoded."""
    R, C = matrix_shape(h["shape"])
    n, r, c, size = h["entries"], h["live_rows"], h["live_cols"], h["stream_bytes"]
    if n > R * C:
        return f"{n} entries for {R * C} values"
    if n == 0:
        return None
    if n_index < 2:
        return "entries but a codebook of zero alone"
    if not (1 <= r <= R and 1 <= c <= C):
        return f"{r} x {c} live rows and columns in a {R} x {C} matrix"
    if n > r * c:
        return f"{n} entries in a live submatrix of {r} x {c}"
    if (r < R and r > n) or (c < C and c > n):
        return f"{r} x {c} live rows and columns for {n} entries (each needs one)"
    if n * BITS_PER_ENTRY > 8 * size:
        return f"{n} entries in a stream of {size} bytes (at least {BITS_PER_ENTRY} bits an entry)"
    return None


def decode_entries(stream, h: dict, n_index: int, *, use_c: bool | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions (int64, increasing) and codebook indices (uint16, none 0) of a tensor's
    non-zeros; ``check_fields`` must have passed.

    Raises:
      rangecoder.CoderError: the stream does not decode as the header says.
    """
    n = h["entries"]
    if n == 0:
        if len(stream):
            raise rangecoder.CoderError("a stream for a tensor without entries")
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint16)
    R, C = matrix_shape(h["shape"])
    r, c = h["live_rows"], h["live_cols"]
    rows, cols, pos, idx = rangecoder.decode(stream, r if r < R else 0, R, c if c < C else 0, C, n,
                                             r * c, n_index, use_c=use_c)
    i, j = np.divmod(pos, c)
    if r < R:
        i = rows[i]
    if c < C:
        j = cols[j]
    return i * C + j, idx

"""One quantised layer in the Deep Compression layout (SPEC section 5; Han et al. 2016).

The tensor is read as a matrix (a conv kernel ``(out, in, kh, kw)`` as
``(out, in * kh * kw)``) row by row, as one sequence.  Each non-zero becomes one
*entry*: a gap (the number of zeros skipped since the previous entry) and a
codebook index.  Gaps are stored in ``gap_bits`` bits, so a gap of
``2 ** gap_bits`` or more is split by *filler* entries: gap ``2 ** gap_bits - 1``
with index 0 (the zero value), each advancing ``2 ** gap_bits`` positions.
Entry k sits at position ``sum_{i<=k} (gap_i + 1) - 1``.  Because rows are
read one after another, row boundaries follow from the column count and no
row pointers are stored.

Gaps and indices are two separate canonical Huffman streams, each with its
table of code lengths.  ``gap_bits`` is chosen per layer to minimise the
layer's bytes (tables included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sws.format import huffman

__all__ = ["LayerCode", "MAX_GAP_BITS", "entries", "encode_layer", "decode_layer",
           "stream_counts", "stream_counts_at", "payload_size"]

MAX_GAP_BITS = 12  # 4096-symbol gap alphabet at most; larger never paid off on MNIST nets


@dataclass
class LayerCode:
    """A coded layer: its two code tables and two streams."""

    gap_bits: int
    entries: int
    gap_lengths: np.ndarray      # code length per gap symbol, trailing zeros trimmed
    index_lengths: np.ndarray    # code length per codebook index, trailing zeros trimmed
    gap_stream: bytes
    gap_stream_bits: int
    index_stream: bytes
    index_stream_bits: int

    def tables_bytes(self) -> int:
        return (len(self.gap_lengths) + 1) // 2 + (len(self.index_lengths) + 1) // 2

    def payload(self) -> bytes:
        """Gap table, index table, gap stream, index stream; each byte-aligned."""
        return (huffman.pack_lengths(self.gap_lengths) + huffman.pack_lengths(self.index_lengths)
                + self.gap_stream + self.index_stream)

    def header(self) -> dict:
        return {"gap_bits": self.gap_bits, "entries": self.entries,
                "gap_symbols": len(self.gap_lengths), "index_symbols": len(self.index_lengths),
                "gap_stream_bits": self.gap_stream_bits,
                "index_stream_bits": self.index_stream_bits}


def payload_size(h: dict) -> int:
    """Payload bytes a layer header declares."""
    return ((h["gap_symbols"] + 1) // 2 + (h["index_symbols"] + 1) // 2
            + (h["gap_stream_bits"] + 7) // 8 + (h["index_stream_bits"] + 7) // 8)


def entries(indices: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gap symbols, index symbols) of a flat array of codebook indices (0 = zero)."""
    pos = np.flatnonzero(indices)
    gaps = np.diff(pos, prepend=-1) - 1
    top = (1 << gap_bits) - 1
    fill = gaps >> gap_bits
    n = int(pos.size + fill.sum())
    gap_sym = np.full(n, top, dtype=np.int64)
    idx_sym = np.zeros(n, dtype=np.int64)
    ends = np.cumsum(fill + 1) - 1
    gap_sym[ends] = gaps & top
    idx_sym[ends] = indices[pos]
    return gap_sym, idx_sym


def _gaps(pos: np.ndarray) -> np.ndarray:
    """Zeros before each of the increasing positions ``pos`` (since the previous one)."""
    gaps = np.empty(pos.size, dtype=np.int64)
    if pos.size:
        gaps[0] = pos[0]
        np.subtract(pos[1:], pos[:-1] + 1, out=gaps[1:])
    return gaps


def stream_counts(indices: np.ndarray, gap_bits: int, n_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbol counts of the gap and index streams, without building the streams."""
    pos = np.flatnonzero(indices)
    return stream_counts_at(pos, indices[pos], gap_bits, n_index)


def stream_counts_at(pos: np.ndarray, idx: np.ndarray, gap_bits: int,
                     n_index: int) -> tuple[np.ndarray, np.ndarray]:
    """``stream_counts`` of a tensor given by its non-zeros only: their increasing flat
    positions ``pos`` and codebook indices ``idx`` (none 0); memory O(len(pos)), whatever the
    tensor's size."""
    gaps = _gaps(np.asarray(pos, dtype=np.int64))
    fill = int((gaps >> gap_bits).sum())
    top = (1 << gap_bits) - 1
    gc = np.bincount(gaps & top, minlength=top + 1)
    gc[top] += fill
    ic = np.bincount(np.asarray(idx, dtype=np.int64), minlength=n_index)
    ic[0] += fill
    return gc, ic


def _trim(lengths: np.ndarray) -> np.ndarray:
    used = np.flatnonzero(lengths)
    return lengths[: used[-1] + 1] if used.size else lengths[:0]


def _cost(gc, ic) -> int:
    """Layer bytes for these stream counts (tables and byte padding included)."""
    total = 0
    for counts in (gc, ic):
        ln = _trim(huffman.code_lengths(counts))
        total += (len(ln) + 1) // 2 + (huffman.coded_bits(counts[: len(ln)], ln) + 7) // 8
    return total


def encode_layer(indices: np.ndarray, n_index: int, gap_bits: int | None = None) -> LayerCode:
    """Code a flat int array of codebook indices (0 = the zero value).

    Args:
      indices: codebook index of every element, row-major.
      n_index: codebook size.
      gap_bits: bits per gap; ``None`` tries 1..MAX_GAP_BITS and keeps the smallest
        layer (ties: fewer bits).
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if gap_bits is None:
        top = max(1, min(MAX_GAP_BITS, int(indices.size).bit_length()))
        costs = [_cost(*stream_counts(indices, b, n_index)) for b in range(1, top + 1)]
        gap_bits = 1 + int(np.argmin(costs))
    gap_sym, idx_sym = entries(indices, gap_bits)
    gl = _trim(huffman.code_lengths(np.bincount(gap_sym, minlength=1 << gap_bits)))
    il = _trim(huffman.code_lengths(np.bincount(idx_sym, minlength=n_index)))
    gs, gbits = huffman.encode(gap_sym, gl)
    xs, xbits = huffman.encode(idx_sym, il)
    return LayerCode(gap_bits, int(gap_sym.size), gl, il, gs, gbits, xs, xbits)


def decode_layer(payload, h: dict, size: int, n_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (int64, increasing) and codebook indices (unsigned, none 0) of a layer's
    non-zero entries (fillers and other index-0 entries dropped).

    Memory is O(entries) whatever ``size`` (the tensor is not built here), and ``entries``
    is checked against ``size`` before the streams are decoded.

    Args:
      payload: the layer's bytes, exactly ``payload_size(h)`` long.
      h: the layer's header fields (see ``LayerCode.header``), already type-checked.
      size: number of elements of the tensor.
      n_index: codebook size.

    Raises:
      huffman.CodeError: the streams do not decode as the header says, an index
        lies outside the codebook or a position outside the tensor.
    """
    mv = memoryview(payload)
    a = (h["gap_symbols"] + 1) // 2
    b = a + (h["index_symbols"] + 1) // 2
    c = b + (h["gap_stream_bits"] + 7) // 8
    if h["gap_symbols"] > (1 << h["gap_bits"]) or h["index_symbols"] > n_index:
        raise huffman.CodeError("code table larger than its alphabet")
    if len(mv) != payload_size(h):
        raise huffman.CodeError("payload size differs from the header's")
    n = h["entries"]
    if n > size:
        raise huffman.CodeError(f"{n} entries cannot fit {size} values")
    if n <= huffman._SMALL and h["gap_symbols"] <= huffman._SMALL \
            and h["index_symbols"] <= huffman._SMALL:
        return _decode_short(mv, h, size, (a, b, c))
    gl = huffman.unpack_lengths(mv[:a], h["gap_symbols"])
    il = huffman.unpack_lengths(mv[a:b], h["index_symbols"])
    gaps = huffman.decode(mv[b:c], h["gap_stream_bits"], gl, n)
    idx = huffman.decode(mv[c:], h["index_stream_bits"], il, n)
    if n == 0:
        return np.zeros(0, dtype=np.int64), idx
    pos = gaps.astype(np.int64)       # entry k at sum_{i <= k} (gap_i + 1) - 1
    pos += 1
    np.cumsum(pos, out=pos)
    pos -= 1
    if pos[-1] >= size:
        raise huffman.CodeError(f"entry at position {int(pos[-1])} beyond the tensor's {size}")
    keep = idx != 0
    if keep.all():
        return pos, idx
    return pos[keep], idx[keep]


def _decode_short(mv: memoryview, h: dict, size: int, cuts) -> tuple[np.ndarray, np.ndarray]:
    """``decode_layer`` in plain Python, for a few entries and small tables (faster there)."""
    a, b, c = cuts
    n = h["entries"]
    gl = huffman._unpack_short(mv[:a], h["gap_symbols"])
    il = huffman._unpack_short(mv[a:b], h["index_symbols"])
    gaps = huffman._decode_short(mv[b:c], h["gap_stream_bits"], gl, n)
    idx = huffman._decode_short(mv[c:], h["index_stream_bits"], il, n)
    p, pos, val = -1, [], []
    for g, i in zip(gaps, idx):
        p += g + 1
        if i:
            pos.append(p)
            val.append(i)
    if p >= size:
        raise huffman.CodeError(f"entry at position {p} beyond the tensor's {size}")
    return np.array(pos, dtype=np.int64), np.array(val, dtype=np.uint8)

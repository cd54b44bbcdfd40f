"""Canonical Huffman codes and MSB-first bit streams, vectorised with numpy.

A code is fully described by its code lengths (one per symbol, 0 = unused):
codes are assigned in order of (length, symbol), as in DEFLATE (RFC 1951,
section 3.2.2), so a file stores only the lengths.  Lengths are limited to
``MAX_CODE_LENGTH`` bits so that they pack into one nibble and decoding can use
one lookup table of ``2 ** max_length`` entries.

Decoding is table driven: the symbol and code length starting at *every* bit
position are looked up at once (numpy); jump tables composed by gathers let the
chain of symbol starts 0 -> 0 + len(0) -> ... be followed 16 symbols per Python
step, and the starts in between are filled in vectorised.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["MAX_CODE_LENGTH", "CodeError", "code_lengths", "canonical_codes", "encode",
           "decode", "pack_lengths", "unpack_lengths", "coded_bits"]

MAX_CODE_LENGTH = 15  # fits a nibble; the decode table has at most 32768 entries
_STRIDE_LOG2 = 4      # decoding follows the chain of symbol starts 16 symbols at a time


class CodeError(ValueError):
    """A code table or bit stream that cannot be decoded."""


def _huffman_depths(weights: np.ndarray) -> np.ndarray:
    """Depth of each leaf in a Huffman tree over ``weights`` (all > 0, at least two).

    Ties are broken by node id (leaves in symbol order, then merged nodes in
    creation order), so the result is deterministic.
    """
    n = len(weights)
    heap = [(int(w), i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    node = n
    while len(heap) > 1:
        wa, a = heapq.heappop(heap)
        wb, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (wa + wb, node))
        node += 1
    depth = [0] * (2 * n - 1)
    for i in range(2 * n - 3, -1, -1):  # parents have larger ids than their children
        depth[i] = depth[parent[i]] + 1
    return np.asarray(depth[:n], dtype=np.uint8)


def code_lengths(counts, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code lengths for symbol ``counts``, each at most ``max_length``.

    Unused symbols get length 0; a lone used symbol gets length 1.  When the
    optimal code is too deep, the counts are halved (rounding up, so no used
    symbol drops out) until it fits; with all counts equal the depth is
    ceil(log2(used symbols)), so this ends.

    Returns:
      uint8 array, one length per symbol.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts > 0)
    if used.size > 2 ** max_length:
        raise ValueError(f"{used.size} symbols do not fit codes of at most {max_length} bits")
    if used.size == 1:
        lengths[used] = 1
    elif used.size > 1:
        w = counts[used]
        while True:
            depth = _huffman_depths(w)
            if int(depth.max()) <= max_length:
                break
            w = (w + 1) // 2
        lengths[used] = depth
    return lengths


def coded_bits(counts, lengths) -> int:
    """Bits of a stream with these symbol ``counts`` coded with these ``lengths``."""
    return int(np.dot(np.asarray(counts, np.int64), np.asarray(lengths, np.int64)))


def canonical_codes(lengths) -> np.ndarray:
    """Canonical code of each symbol (int64; 0 for unused symbols).

    Raises:
      CodeError: the lengths break the Kraft inequality or exceed MAX_CODE_LENGTH.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.max() > MAX_CODE_LENGTH or lengths.min() < 0):
        raise CodeError(f"code lengths must lie in 0..{MAX_CODE_LENGTH}")
    used = np.flatnonzero(lengths)
    if used.size and int(np.sum(2.0 ** (MAX_CODE_LENGTH - lengths[used]))) > 2 ** MAX_CODE_LENGTH:
        raise CodeError("code lengths are oversubscribed (Kraft sum > 1)")
    order = used[np.lexsort((used, lengths[used]))]
    codes = np.zeros(len(lengths), dtype=np.int64)
    out, code, prev = [], 0, 0
    for n in lengths[order].tolist():
        code <<= n - prev
        prev = n
        out.append(code)
        code += 1
    codes[order] = out
    return codes


def encode(symbols, lengths) -> tuple[bytes, int]:
    """Code ``symbols`` MSB first; the last byte is padded with zero bits.

    Returns:
      (stream bytes, number of meaningful bits).
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if symbols.size == 0:
        return b"", 0
    if symbols.min() < 0 or symbols.max() >= len(lengths):
        raise ValueError("symbol outside the code's alphabet")
    codes = canonical_codes(lengths)
    ln, c = lengths[symbols], codes[symbols]
    if ln.min() == 0:
        raise ValueError("symbol without a code (length 0)")
    j = np.arange(int(ln.max()))
    shift = ln[:, None] - 1 - j[None, :]
    bits = (c[:, None] >> np.maximum(shift, 0)) & 1
    bits = bits[shift >= 0].astype(np.uint8)  # row-major: symbol by symbol, MSB first
    return np.packbits(bits).tobytes(), int(ln.sum())


def _decode_table(lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbol, length) for every ``width``-bit window; length 0 marks no valid code."""
    codes = canonical_codes(lengths)
    sym = np.zeros(1 << width, dtype=np.int32)
    ln = np.zeros(1 << width, dtype=np.int32)
    for s in np.flatnonzero(lengths).tolist():
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = (int(codes[s]) + 1) << (width - int(lengths[s]))
        sym[lo:hi] = s
        ln[lo:hi] = int(lengths[s])
    return sym, ln


def decode(data, nbits: int, lengths, count: int) -> np.ndarray:
    """Decode exactly ``count`` symbols that fill exactly ``nbits`` bits of ``data``.

    Memory and time are O(nbits); the caller bounds ``nbits`` by the bytes
    actually present, and ``count`` <= ``nbits`` is checked first.

    Raises:
      CodeError: an invalid code, a stream that ends early or has bits left over.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    if nbits < 0 or count < 0 or nbits > 8 * buf.size:
        raise CodeError("stream length out of range")
    if count == 0:
        if nbits:
            raise CodeError("bits left over after the last symbol")
        return np.zeros(0, dtype=np.int64)
    if nbits < count:
        raise CodeError("stream too short for its symbol count")
    width = int(lengths.max()) if lengths.size else 0
    if width == 0:
        raise CodeError("empty code table for a non-empty stream")
    table_sym, table_len = _decode_table(lengths, width)
    padded = np.zeros(buf.size + 3, dtype=np.int32)
    padded[:buf.size] = buf
    p = np.arange(nbits, dtype=np.int64)
    byte = p >> 3
    w24 = (padded[byte] << 16) | (padded[byte + 1] << 8) | padded[byte + 2]
    window = (w24 >> (24 - width - (p & 7))) & ((1 << width) - 1)
    size = nbits + MAX_CODE_LENGTH + 1
    ln = np.zeros(size, dtype=np.int64)
    ln[:nbits] = table_len[window]
    # jumps[k][p]: where the symbol 2**k symbols after one starting at p starts
    # (an invalid code has length 0 and stalls, caught below)
    jumps = [np.arange(size, dtype=np.int64) + ln]
    for _ in range(_STRIDE_LOG2):
        jumps.append(jumps[-1][jumps[-1]])
    far = jumps.pop()
    rows, pos = [0] * -(-count // (1 << _STRIDE_LOG2)), 0
    for i in range(len(rows)):   # one Python step per 16 symbols
        rows[i] = pos
        pos = int(far[pos])
    starts = np.asarray(rows, dtype=np.int64)[:, None]
    for jump in jumps:            # fill in the 15 starts between
        starts = np.concatenate([starts, jump[starts]], axis=1)
    starts = starts.reshape(-1)[:count]
    last = int(starts[-1])
    if last >= nbits or not ln[starts].all():
        raise CodeError("invalid code or stream ends before its last symbol")
    if last + int(ln[last]) != nbits:
        raise CodeError("bits left over after the last symbol")
    return table_sym[window[starts]].astype(np.int64)


def pack_lengths(lengths) -> bytes:
    """Code lengths as nibbles, two per byte, high nibble first."""
    ln = np.asarray(lengths, dtype=np.uint8)
    if ln.size and ln.max() > MAX_CODE_LENGTH:
        raise ValueError("code length does not fit a nibble")
    if ln.size % 2:
        ln = np.append(ln, np.uint8(0))
    return ((ln[0::2] << 4) | ln[1::2]).astype(np.uint8).tobytes()


def unpack_lengths(data, n: int) -> np.ndarray:
    """Inverse of ``pack_lengths`` for ``n`` symbols."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size != (n + 1) // 2:
        raise CodeError("code table has the wrong size")
    out = np.empty(2 * b.size, dtype=np.uint8)
    out[0::2] = b >> 4
    out[1::2] = b & 15
    if n % 2 and out[-1]:
        raise CodeError("code table padding is not zero")
    return out[:n]

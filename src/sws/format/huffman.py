"""Canonical Huffman codes and MSB-first bit streams, vectorised with numpy.

A code is fully described by its code lengths (one per symbol, 0 = unused):
codes are assigned in order of (length, symbol), as in DEFLATE (RFC 1951,
section 3.2.2), so a file stores only the lengths.  Lengths are limited to
``MAX_CODE_LENGTH`` bits so that they pack into one nibble.

Decoding works on blocks of ``_BLOCK_BITS`` bits, so its working memory is bounded
whatever the stream's length: the code length starting at *every* bit position of
the block is found at once (numpy; canonical codes grow with their length, so a
search over the at most 15 length limits finds it, with no table of
``2 ** length`` entries); jump tables composed by gathers let the chain of symbol
starts 0 -> 0 + len(0) -> ... be followed 128 symbols per Python step, and the
starts in between are filled in vectorised.  Streams of a few symbols are decoded
symbol by symbol in plain Python, which is faster for them (a file may hold
thousands of tiny tensors).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right

import numpy as np

__all__ = ["MAX_CODE_LENGTH", "CodeError", "code_lengths", "canonical_codes", "encode",
           "decode", "pack_lengths", "unpack_lengths", "coded_bits"]

MAX_CODE_LENGTH = 15  # fits a nibble
_STRIDE_LOG2 = 7      # decoding follows the chain of symbol starts 128 symbols at a time
_SMALL = 128          # at most this many symbols and table entries: decoded in plain Python
_CHAIN = 384          # at most this many symbols (and 16 bits each): the chain followed in Python


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


class _Canonical:
    """What decoding needs of a canonical code: for a ``width``-bit window (the next bits, MSB
    first) the length of the code it starts with, and then its symbol.

    Canonical codes, left-justified to ``width`` bits, grow with their length, so the length
    is one plus the number of limits ``limit[L]`` (the first left-justified code longer than
    L) at or below the window: a search over at most 15 values, with no table of
    ``2 ** width`` entries (for a short stream that table would cost more than the stream).
    """

    def __init__(self, lengths: np.ndarray):
        if lengths.size <= _SMALL:
            width, limit, first, base, order = _small_tables(lengths.tolist())
        else:
            if lengths.max() > MAX_CODE_LENGTH or lengths.min() < 0:
                raise CodeError(f"code lengths must lie in 0..{MAX_CODE_LENGTH}")
            used = np.flatnonzero(lengths)
            ln = lengths[used]
            if int(np.sum(np.left_shift(1, MAX_CODE_LENGTH - ln))) > 1 << MAX_CODE_LENGTH:
                raise CodeError("code lengths are oversubscribed (Kraft sum > 1)")
            order = used[np.argsort(ln, kind="stable")]   # by (length, symbol)
            width, limit, first, base = _limits(np.bincount(ln, minlength=16).tolist())
        self.width = width
        self.limit = np.asarray(limit, dtype=np.int64)
        self.first = np.asarray(first, dtype=np.int64)
        self.base = np.asarray(base, dtype=np.int64)
        self.order = np.asarray(order, dtype=np.int64)

    def build_table(self) -> None:
        """Look-up tables over all ``2 ** width`` windows (worth it when the stream is at least
        that long): a window's code length and symbol in one gather each."""
        per_length = np.diff(np.append(self.base[1:self.width + 1], self.order.size))
        ln = np.repeat(np.arange(1, self.width + 1), per_length)    # code lengths in code order
        span = np.left_shift(1, self.width - ln)       # windows each code covers
        self.table_len = np.zeros(1 << self.width, dtype=np.int32)
        self.table_sym = np.zeros(1 << self.width, dtype=np.int64)
        covered = int(span.sum())
        self.table_len[:covered] = np.repeat(ln, span)
        self.table_sym[:covered] = np.repeat(self.order, span)

    table_len = table_sym = None

    def lengths_at(self, window: np.ndarray) -> np.ndarray:
        """Code length starting at each window; 0 where no code starts (incomplete code)."""
        if self.table_len is not None:
            return self.table_len[window]
        n = np.searchsorted(self.limit, window, side="right").astype(np.int32)
        n += 1
        n[n > self.width] = 0
        return n

    def symbols_at(self, window: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Symbol of each window given its code length ``n`` (all > 0)."""
        if self.table_sym is not None:
            return self.table_sym[window]
        window = window.astype(np.int64)
        rank = self.base[n] + (window >> (self.width - n)) - self.first[n]
        return self.order[rank]


def _limits(count: list[int]):
    """(width, limit, first, base) of a canonical code with ``count[L]`` codes of length L:
    the longest length, the left-justified end of the codes up to each length L = 1..width,
    the first code of each length and the number of shorter codes."""
    width = max(n for n in range(len(count)) if count[n]) if any(count[1:]) else 0
    first, base, limit = [0] * (width + 1), [0] * (width + 1), []
    code = below = 0
    for n in range(1, width + 1):
        code = (code + (count[n - 1] if n > 1 else 0)) << 1
        first[n], base[n] = code, below
        below += count[n]
        limit.append((code + count[n]) << (width - n))
    return width, limit, first, base


def _small_tables(lengths: list[int]):
    """``_Canonical``'s tables as Python lists, for a small code: (width, limit, first, base,
    order); the same checks as ``canonical_codes``."""
    if min(lengths) < 0 or max(lengths) > MAX_CODE_LENGTH:
        raise CodeError(f"code lengths must lie in 0..{MAX_CODE_LENGTH}")
    used = sorted((n, s) for s, n in enumerate(lengths) if n)
    if sum(1 << (MAX_CODE_LENGTH - n) for n, _ in used) > 1 << MAX_CODE_LENGTH:
        raise CodeError("code lengths are oversubscribed (Kraft sum > 1)")
    count = [0] * (MAX_CODE_LENGTH + 1)
    for n, _ in used:
        count[n] += 1
    return (*_limits(count), [s for _, s in used])


def _decode_small(data: bytes, nbits: int, tables, count: int) -> list[int]:
    width, limit, first, base, order = tables
    total = 8 * len(data) + width
    value = int.from_bytes(data, "big") << width      # zero bits past the end
    mask = (1 << width) - 1
    out, pos = [0] * count, 0
    for i in range(count):
        if pos >= nbits:
            raise CodeError("stream ends before its last symbol")
        w = (value >> (total - pos - width)) & mask
        n = bisect_right(limit, w) + 1
        if n > width:
            raise CodeError("invalid code in the stream")
        out[i] = order[base[n] + (w >> (width - n)) - first[n]]
        pos += n
    if pos != nbits:
        raise CodeError("bits left over after the last symbol" if pos < nbits
                        else "stream ends inside its last symbol")
    return out


def _decode_short(data, nbits: int, lengths: list[int], count: int) -> list[int]:
    """``decode`` in plain Python for a short stream and a small table; the same checks."""
    data = bytes(data)
    if nbits < 0 or count < 0 or nbits > 8 * len(data):
        raise CodeError("stream length out of range")
    if count == 0:
        if nbits:
            raise CodeError("bits left over after the last symbol")
        return []
    if nbits < count:
        raise CodeError("stream too short for its symbol count")
    if nbits > MAX_CODE_LENGTH * count:
        raise CodeError("stream longer than its symbols' longest codes")
    if not any(lengths):
        raise CodeError("empty code table for a non-empty stream")
    return _decode_small(data[:(nbits + 7) // 8], nbits, _small_tables(lengths), count)


def _unpack_short(data, n: int) -> list[int]:
    """``unpack_lengths`` in plain Python, as a list."""
    b = bytes(data)
    if len(b) != (n + 1) // 2:
        raise CodeError("code table has the wrong size")
    out = [x for byte in b for x in (byte >> 4, byte & 15)]
    if n % 2 and out[-1]:
        raise CodeError("code table padding is not zero")
    return out[:n]


_BLOCK_BITS = 1 << 16   # bits examined per block: the working memory, about 60 bytes a bit


def _windows(buf: np.ndarray, start: int, stop: int, width: int) -> np.ndarray:
    """The ``width`` bits from every bit position start..stop-1, MSB first (zeros past the end)."""
    lo, hi = start >> 3, ((stop - 1) >> 3) + 1
    chunk = np.zeros(hi - lo + 2, dtype=np.int32)
    part = buf[lo:hi + 2]
    chunk[:part.size] = part
    w24 = chunk[:-2] << 16                       # the 3 bytes from each byte on
    w24 |= chunk[1:-1] << 8
    w24 |= chunk[2:]
    p = np.arange(start - 8 * lo, stop - 8 * lo, dtype=np.int32)
    out = w24[p >> 3]
    out >>= 24 - width - (p & 7)
    out &= (1 << width) - 1
    return out


def _decode_chain(buf: np.ndarray, nbits: int, code: _Canonical, count: int) -> np.ndarray:
    """A short stream: code lengths at every bit at once (numpy), the chain of symbol starts
    followed in Python (cheaper than the jump tables below a few thousand bits)."""
    window = _windows(buf, 0, nbits, code.width)
    ln = code.lengths_at(window)
    lens, starts, p = ln.tolist(), [0] * count, 0
    for i in range(count):
        if p >= nbits:
            raise CodeError("stream ends before its last symbol")
        n = lens[p]
        if not n:
            raise CodeError("invalid code in the stream")
        starts[i] = p
        p += n
    if p != nbits:
        raise CodeError("bits left over after the last symbol" if p < nbits
                        else "stream ends inside its last symbol")
    s = np.array(starts, dtype=np.int64)
    return code.symbols_at(window[s], ln[s])


def decode(data, nbits: int, lengths, count: int) -> np.ndarray:
    """Decode exactly ``count`` symbols that fill exactly ``nbits`` bits of ``data``.

    Working memory is bounded (blocks of ``_BLOCK_BITS`` bits) and the result is
    ``count`` values of the smallest unsigned type that holds the alphabet, so memory
    is proportional to the output; time is O(nbits).  ``count <= nbits <= 15 count``
    is checked before anything is allocated.

    Raises:
      CodeError: an invalid code, a stream that ends early or has bits left over.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    out_type = np.uint8 if lengths.size <= 1 << 8 else np.uint16 if lengths.size <= 1 << 16 \
        else np.int64
    if count <= _SMALL and lengths.size <= _SMALL:
        return np.array(_decode_short(data, nbits, lengths.tolist(), count), dtype=out_type)
    buf = np.frombuffer(data, dtype=np.uint8)
    if nbits < 0 or count < 0 or nbits > 8 * buf.size:
        raise CodeError("stream length out of range")
    if count == 0:
        if nbits:
            raise CodeError("bits left over after the last symbol")
        return np.zeros(0, dtype=out_type)
    if nbits < count:
        raise CodeError("stream too short for its symbol count")
    if nbits > MAX_CODE_LENGTH * count:
        raise CodeError("stream longer than its symbols' longest codes")
    if not lengths.size or not lengths.any():
        raise CodeError("empty code table for a non-empty stream")
    code = _Canonical(lengths)
    width = code.width
    if 1 << width <= max(1024, nbits):
        code.build_table()
    if count <= _CHAIN and nbits <= 16 * _CHAIN:
        return _decode_chain(buf, nbits, code, count).astype(out_type)
    levels = min(_STRIDE_LOG2, max(1, (count - 1).bit_length()))
    stride = 1 << levels
    out = np.empty(count, dtype=out_type)
    done, pos = 0, 0
    while done < count:
        if pos >= nbits:
            raise CodeError("stream ends before its last symbol")
        stop = min(pos + _BLOCK_BITS, nbits)
        size = stop - pos
        window = _windows(buf, pos, stop, width)
        ln = code.lengths_at(window)
        # nxt[q]: where the symbol after the one at pos + q starts (block-relative); positions
        # size..size+15 are past the block and stay put, as does an invalid code (length 0)
        nxt = np.arange(size + MAX_CODE_LENGTH + 1, dtype=np.int32)
        nxt[:size] += ln
        jumps = [nxt]
        for _ in range(levels):          # jumps[k][q]: 2**k symbols on
            jumps.append(jumps[-1][jumps[-1]])
        far = jumps.pop()
        rows, q = [], 0
        need_rows = -(-(count - done) // stride)
        while q < size and len(rows) < need_rows:   # one Python step per `stride` symbols
            rows.append(q)
            nq = int(far[q])
            if nq == q:
                break
            q = nq
        starts = np.asarray(rows, dtype=np.int32)[:, None]
        for jump in jumps:               # fill in the starts between, in order
            starts = np.concatenate([starts, jump[starts]], axis=1)
        starts = starts.reshape(-1)
        inside = starts < size
        inside[inside] = ln[starts[inside]] > 0
        k = int(np.argmin(inside)) if not inside.all() else starts.size
        take = min(k, count - done)
        s = starts[:take]
        out[done:done + take] = code.symbols_at(window[s], ln[s])
        done += take
        if done == count:
            last = int(s[-1])
            if pos + last + int(ln[last]) != nbits:
                raise CodeError("bits left over after the last symbol")
            break
        nxt_start = int(starts[k]) if k < starts.size else int(far[q])
        if nxt_start < size:
            raise CodeError("invalid code in the stream")
        pos += nxt_start
    return out


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
    if n <= _SMALL:
        return np.array(_unpack_short(data, n), dtype=np.uint8)
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size != (n + 1) // 2:
        raise CodeError("code table has the wrong size")
    out = np.empty(2 * b.size, dtype=np.uint8)
    out[0::2] = b >> 4
    out[1::2] = b & 15
    if n % 2 and out[-1]:
        raise CodeError("code table padding is not zero")
    return out[:n]

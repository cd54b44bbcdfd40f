"""The adaptive binary range coder of format version 3, in C (``_coder.c``) and in Python.

One stream per sparse tensor codes three lists of increasing positions: the live rows
(positions below the row count), the live columns, and the entries (positions in the live
submatrix, row-major), each entry followed by its codebook index.  Every position is coded as
its gap (the positions skipped since the previous one), Elias-gamma binarised: the bit length
``nb`` of ``gap + 1`` in unary (``nb - 1`` ones, then a zero), then its ``nb - 1`` bits below the
leading one, most significant first.  An index ``i`` (1 .. codebook size - 1) is coded as the
``ibits`` bits of ``i - 1`` down a bit tree.  Each binary decision has its own adaptive
probability (see ``docs/FORMAT.md``, "A sparse tensor, version 3", for the exact contexts, the
update and the arithmetic).  ``_coder.c`` is used when the extension is built; this module's
Python coder gives the same bytes and is used otherwise (it is about 100 times slower).
"""

from __future__ import annotations

import ctypes

import numpy as np

__all__ = ["CoderError", "MAX_NB", "MAX_IBITS", "index_bits", "encode", "decode", "c_available"]

MAX_NB = 32          # bit lengths of gap + 1: gaps below 2**32 - 1
MAX_IBITS = 12       # codebooks of at most 4096 entries
_PROB_INIT, _PROB_MIN, _PROB_MAX, _COUNT_MAX = 32768, 32, 65504, 62
_TOP = 1 << 24
_ERRORS = {-1: "stream does not start with a code value", -2: "a position outside its bound",
           -3: "an index outside the codebook", -4: "a gap longer than 32 bits",
           -5: "out of memory"}


class CoderError(ValueError):
    """A stream that does not decode as its header declares."""


def index_bits(n_index: int) -> int:
    """Bits of the bit tree for a codebook of ``n_index`` entries (indices 1 .. n_index - 1)."""
    return max(0, n_index - 2).bit_length()


# --- the C coder ---------------------------------------------------------------------------

def _load():
    try:
        from sws.format import _coder  # built by setup.py when a compiler is present
    except ImportError:
        return None
    try:
        lib = ctypes.CDLL(_coder.__file__)
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.sws_rc_encode.restype = i64
        lib.sws_rc_encode.argtypes = [vp, i64, vp, i64, vp, vp, i64, ctypes.c_int, vp, i64]
        lib.sws_rc_decode.restype = i64
        lib.sws_rc_decode.argtypes = [vp, i64, i64, i64, i64, i64, i64, i64, ctypes.c_int, i64,
                                      vp, vp, vp, vp]
    except (OSError, AttributeError):
        return None
    return lib


_lib = _load()


def c_available() -> bool:
    """Whether the C coder is built (else the Python coder, same bytes, is used)."""
    return _lib is not None


def _ptr(a: np.ndarray):
    return a.ctypes.data if a.size else None


# --- the Python coder ----------------------------------------------------------------------

def _models(n: int) -> tuple[list[int], list[int]]:
    return [_PROB_INIT] * n, [0] * n


# context offsets inside one gap model: unary levels 0..31, then mantissa contexts 4 per nb
_GAP_SIZE = MAX_NB + 4 * (MAX_NB + 1)


class _Encoder:
    def __init__(self):
        self.low, self.range, self.cache, self.cache_size = 0, 0xFFFFFFFF, 0, 1
        self.out = bytearray()
        self.first = True
        self.p, self.n = _models(3 * _GAP_SIZE + (1 << MAX_IBITS))

    def shift_low(self):
        low = self.low
        if low < 0xFF000000 or low >= 1 << 32:
            carry, temp = low >> 32, self.cache
            for _ in range(self.cache_size):
                if self.first:
                    self.first = False
                else:
                    self.out.append((temp + carry) & 0xFF)
                temp = 0xFF
            self.cache_size = 0
            self.cache = (low >> 24) & 0xFF
        self.cache_size += 1
        self.low = (low & 0x00FFFFFF) << 8

    def bit(self, ctx: int, bit: int):
        p = self.p[ctx]
        bound = (self.range >> 16) * p
        if bit:
            self.low += bound
            self.range -= bound
        else:
            self.range = bound
        while self.range < _TOP:
            self.range <<= 8
            self.shift_low()
        n = self.n[ctx]
        p = p - p // (n + 2) if bit else p + (65536 - p) // (n + 2)
        self.p[ctx] = _PROB_MIN if p < _PROB_MIN else _PROB_MAX if p > _PROB_MAX else p
        if n < _COUNT_MAX:
            self.n[ctx] = n + 1

    def gap(self, base: int, v: int):
        x = v + 1
        nb = x.bit_length()
        for k in range(1, nb):
            self.bit(base + k - 1, 1)
        self.bit(base + nb - 1, 0)
        m = base + MAX_NB + 4 * nb
        first = 0
        for i, k in enumerate(range(nb - 2, -1, -1)):
            bit = (x >> k) & 1
            if i == 0:
                first = bit
                self.bit(m, bit)
            else:
                self.bit(m + 1 + first if i == 1 else m + 3, bit)

    def finish(self) -> bytes:
        low, rng = self.low, self.range
        for k in range(32, -1, -1):
            mask = (1 << k) - 1
            v = (low + mask) & ~mask
            if v <= low + rng - 1:
                self.low = v
                break
        for _ in range(5):
            self.shift_low()
        return bytes(self.out.rstrip(b"\0"))


def _py_encode(rows, cols, pos, idx, ibits: int) -> bytes:
    e = _Encoder()
    for base, lst in ((0, rows), (_GAP_SIZE, cols)):
        prev = -1
        for p in lst:
            e.gap(base, p - prev - 1)
            prev = p
    prev, tree = -1, 3 * _GAP_SIZE
    for p, i in zip(pos, idx):
        e.gap(2 * _GAP_SIZE, p - prev - 1)
        prev = p
        s, node = i - 1, 1
        for k in range(ibits - 1, -1, -1):
            bit = (s >> k) & 1
            e.bit(tree + node, bit)
            node = 2 * node + bit
    return e.finish()


class _Decoder:
    def __init__(self, data: bytes):
        self.data, self.at = data, 4
        self.range = 0xFFFFFFFF
        self.code = int.from_bytes(data[:4].ljust(4, b"\0"), "big")
        if self.code >= self.range:
            raise CoderError(_ERRORS[-1])
        self.p, self.n = _models(3 * _GAP_SIZE + (1 << MAX_IBITS))

    def bit(self, ctx: int) -> int:
        p = self.p[ctx]
        bound = (self.range >> 16) * p
        if self.code < bound:
            self.range, bit = bound, 0
        else:
            self.code -= bound
            self.range -= bound
            bit = 1
        while self.range < _TOP:
            self.range <<= 8
            at = self.at
            self.code = (self.code << 8) | (self.data[at] if at < len(self.data) else 0)
            self.at = at + 1
        n = self.n[ctx]
        p = p - p // (n + 2) if bit else p + (65536 - p) // (n + 2)
        self.p[ctx] = _PROB_MIN if p < _PROB_MIN else _PROB_MAX if p > _PROB_MAX else p
        if n < _COUNT_MAX:
            self.n[ctx] = n + 1
        return bit

    def gap(self, base: int) -> int:
        nb = 1
        while self.bit(base + nb - 1):
            nb += 1
            if nb > MAX_NB:
                raise CoderError(_ERRORS[-4])
        m, x, first = base + MAX_NB + 4 * nb, 1, 0
        for i in range(nb - 1):
            if i == 0:
                bit = first = self.bit(m)
            else:
                bit = self.bit(m + 1 + first if i == 1 else m + 3)
            x = (x << 1) | bit
        return x - 1

    def positions(self, base: int, n: int, bound: int) -> list[int]:
        out, p = [], -1
        for _ in range(n):
            v = self.gap(base)
            if v >= bound - p - 1:
                raise CoderError(_ERRORS[-2])
            p += v + 1
            out.append(p)
        return out


def _py_decode(data: bytes, nr, r_bound, nc, c_bound, n, area, ibits, n_index):
    d = _Decoder(bytes(data))
    rows = d.positions(0, nr, r_bound)
    cols = d.positions(_GAP_SIZE, nc, c_bound)
    pos, idx, p, tree, top = [], [], -1, 3 * _GAP_SIZE, 1 << ibits
    for _ in range(n):
        v = d.gap(2 * _GAP_SIZE)
        if v >= area - p - 1:
            raise CoderError(_ERRORS[-2])
        p += v + 1
        pos.append(p)
        node = 1
        for _ in range(ibits):
            node = 2 * node + d.bit(tree + node)
        s = node - top + 1
        if s >= n_index:
            raise CoderError(_ERRORS[-3])
        idx.append(s)
    return rows, cols, pos, idx, d.at


# --- the interface -------------------------------------------------------------------------

def encode(rows, cols, pos, idx, n_index: int, *, use_c: bool | None = None) -> bytes:
    """The stream of one tensor: increasing ``rows`` and ``cols`` (the live lists, maybe
    empty), increasing entry positions ``pos`` and their codebook indices ``idx``
    (1 .. n_index - 1).  ``use_c``: None = the C coder when built, False = Python."""
    rows, cols, pos = (np.ascontiguousarray(a, dtype=np.int64) for a in (rows, cols, pos))
    idx = np.ascontiguousarray(idx, dtype=np.int32)
    ibits = index_bits(n_index)
    if use_c is None:
        use_c = _lib is not None
    if not use_c:
        return _py_encode(rows.tolist(), cols.tolist(), pos.tolist(), idx.tolist(), ibits)
    cap = 64 + 4 * (rows.size + cols.size) + (2 + ibits) * pos.size
    while True:
        out = np.empty(cap, dtype=np.uint8)
        n = _lib.sws_rc_encode(_ptr(rows), rows.size, _ptr(cols), cols.size, _ptr(pos), _ptr(idx),
                               pos.size, ibits, _ptr(out), cap)
        if n >= 0:
            return out[:n].tobytes()
        if n != -1:
            raise MemoryError("range coder: out of memory")
        cap *= 2


def decode(data, nr: int, r_bound: int, nc: int, c_bound: int, n: int, area: int, n_index: int,
           *, use_c: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, pos, idx) of a stream: ``nr`` rows below ``r_bound``, ``nc`` columns below
    ``c_bound``, ``n`` entries below ``area`` with indices below ``n_index``.  Memory is
    O(nr + nc + n), the caller's to bound; bytes past the stream read as zero bits, and the
    stream's bytes after what the decoder read must be zero.

    Raises:
      CoderError: a position past its bound, an index past the codebook, a gap of more than
        32 bits, a stream with non-zero bytes it does not use.
    """
    data = bytes(data)
    ibits = index_bits(n_index)
    if use_c is None:
        use_c = _lib is not None
    if use_c:
        rows, cols, pos = (np.empty(k, dtype=np.int64) for k in (nr, nc, n))
        idx = np.empty(n, dtype=np.int16)
        buf = np.frombuffer(data, dtype=np.uint8)
        at = _lib.sws_rc_decode(_ptr(buf), buf.size, nr, r_bound, nc, c_bound, n, area, ibits,
                                n_index, _ptr(rows), _ptr(cols), _ptr(pos), _ptr(idx))
        if at < 0:
            raise CoderError(_ERRORS.get(at, "stream does not decode"))
    else:
        r, c, p, i, at = _py_decode(data, nr, r_bound, nc, c_bound, n, area, ibits, n_index)
        rows, cols, pos = (np.array(a, dtype=np.int64) for a in (r, c, p))
        idx = np.array(i, dtype=np.int16)
    if any(data[at:]):
        raise CoderError("non-zero bytes after the end of the stream")
    return rows, cols, pos, idx.astype(np.uint16)

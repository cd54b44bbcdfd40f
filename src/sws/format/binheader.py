"""The binary header of format version 3 (``docs/FORMAT.md``, "Header, version 3"): varints, the
model description as a tagged JSON value, the codebook as float32, one record per tensor."""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from sws.format.errors import (MAX_CODEBOOK, MAX_DIMS, MAX_ELEMENTS, ElementLimitError,
                               MalformedHeaderError)

__all__ = ["RAW_DTYPES", "SPARSE", "Reader", "varint", "encode", "parse"]

RAW_DTYPES = ("float32", "float64", "float16", "int64", "int32")   # kind codes 0..4
SPARSE = 5                                                         # kind code of a sparse tensor
MAX_DEPTH = 32        # nesting of the model description
MAX_VARINT = 10       # bytes: values below 2**64
_NULL, _FALSE, _TRUE, _INT, _FLOAT, _STR, _LIST, _OBJ = range(8)


def varint(v: int) -> bytes:
    """Unsigned LEB128: 7 bits a byte, least significant first, high bit = more follow."""
    if v < 0 or v >= 1 << 64:
        raise ValueError(f"varint out of range: {v}")
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


class Reader:
    """Bounded reads from ``data``; every failure raises ``error`` (a FormatError subclass)."""

    def __init__(self, data, error=MalformedHeaderError, at: int = 0):
        self.data, self.at, self.error = memoryview(data), at, error

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.at:
            raise self.error("header ends inside a field")
        b = bytes(self.data[self.at:self.at + n])
        self.at += n
        return b

    def varint(self) -> int:
        v = shift = 0
        for i in range(MAX_VARINT):
            if self.at >= len(self.data):
                raise self.error("header ends inside a varint")
            b = self.data[self.at]
            self.at += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and i:
                    raise self.error("varint not in its shortest form")
                if v >= 1 << 64:
                    raise self.error("varint past 64 bits")
                return v
        raise self.error("varint longer than 10 bytes")

    def text(self) -> str:
        b = self.take(self.varint())
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("string not UTF-8") from None


def _value(v, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"model description nested deeper than {MAX_DEPTH}")
    if v is None:
        out.append(_NULL)
    elif v is True or v is False:
        out.append(_TRUE if v else _FALSE)
    elif isinstance(v, int):
        if not -(1 << 63) <= v < 1 << 63:
            raise ValueError(f"integer {v} does not fit 64 bits")
        out.append(_INT)
        out += varint((v << 1) ^ (v >> 63) if v < 0 else v << 1)   # zigzag
    elif isinstance(v, float):
        out.append(_FLOAT)
        out += struct.pack("<d", v)
    elif isinstance(v, str):
        b = v.encode("utf-8")
        out.append(_STR)
        out += varint(len(b)) + b
    elif isinstance(v, list):
        out.append(_LIST)
        out += varint(len(v))
        for x in v:
            _value(x, out, depth + 1)
    else:   # dict with str keys (after the JSON round trip)
        out.append(_OBJ)
        out += varint(len(v))
        for k, x in v.items():
            b = k.encode("utf-8")
            out += varint(len(b)) + b
            _value(x, out, depth + 1)


def _read_value(r: Reader, depth: int):
    if depth > MAX_DEPTH:
        raise MalformedHeaderError(f"model description nested deeper than {MAX_DEPTH}")
    tag = r.take(1)[0]
    if tag in (_NULL, _FALSE, _TRUE):
        return (None, False, True)[tag]
    if tag == _INT:
        z = r.varint()
        if z >= 1 << 64:
            raise MalformedHeaderError("integer past 64 bits")
        return (z >> 1) ^ -(z & 1)
    if tag == _FLOAT:
        return struct.unpack("<d", r.take(8))[0]
    if tag == _STR:
        return r.text()
    if tag == _LIST:
        n = r.varint()
        if n > len(r.data) - r.at:     # every value takes a byte at least
            raise MalformedHeaderError("list longer than the header")
        return [_read_value(r, depth + 1) for _ in range(n)]
    if tag == _OBJ:
        n = r.varint()
        if n > len(r.data) - r.at:
            raise MalformedHeaderError("object longer than the header")
        obj = {}
        for _ in range(n):
            k = r.text()
            if k in obj:
                raise MalformedHeaderError("header has a duplicate key")
            obj[k] = _read_value(r, depth + 1)
        return obj
    raise MalformedHeaderError(f"unknown value tag {tag}")


def encode(model: dict, cb: np.ndarray, tensors: list[dict]) -> bytes:
    """The header: ``tensors`` as normalised records (name, shape, coding, dtype, and for a
    sparse tensor entries, live_rows, live_cols, stream_bytes)."""
    out = bytearray()
    _value(json.loads(json.dumps(model)), out, 0)   # exactly what a JSON header would give back
    out += varint(cb.size) + cb[1:].astype("<f4").tobytes()
    out += varint(len(tensors))
    for h in tensors:
        name = h["name"].encode("utf-8")
        out += varint(len(name)) + name
        kind = SPARSE if h["coding"] == "sparse-range" else RAW_DTYPES.index(h["dtype"])
        out.append(kind | len(h["shape"]) << 4)
        for d in h["shape"]:
            out += varint(d)
        if kind == SPARSE:
            out += varint(h["entries"])
            if h["entries"]:
                out += varint(h["live_rows"]) + varint(h["live_cols"]) + varint(h["stream_bytes"])
    return bytes(out)


def parse(stored, max_tensors: int, limit_hint: str) -> tuple[dict, np.ndarray]:
    """(header with normalised tensors, codebook) of a version 3 header; the header's every
    byte must be used."""
    r = Reader(stored)
    model = _read_value(r, 0)
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise MalformedHeaderError("header 'model' must be an object with a 'name'")
    k = r.varint()
    if not 1 <= k <= MAX_CODEBOOK:
        raise MalformedHeaderError("codebook must hold 1..4096 values")
    cb = np.concatenate([np.zeros(1, np.float32), np.frombuffer(r.take(4 * (k - 1)), "<f4")])
    cb = cb.astype(np.float32)
    if not np.isfinite(cb).all():
        raise MalformedHeaderError("codebook entry not finite")
    if (cb[1:] == 0).any() or np.unique(cb.view(np.uint32)).size != cb.size:
        raise MalformedHeaderError("codebook entries must be distinct, only entry 0 zero")
    count = r.varint()
    if count > max_tensors:
        raise ElementLimitError(f"file declares {count:,} tensors, more than the limit of "
                                f"{max_tensors:,} {limit_hint}")
    names, tensors = set(), []
    for _ in range(count):
        name = r.text()
        if name in names:
            raise MalformedHeaderError(f"tensor name {name[:80]!r} repeated")
        names.add(name)
        kind = r.take(1)[0]
        code, ndim = kind & 15, kind >> 4
        if code > SPARSE or ndim > MAX_DIMS:
            raise MalformedHeaderError(f"{name}: unknown kind byte {kind:#04x}")
        shape = [r.varint() for _ in range(ndim)]
        if any(d >= MAX_ELEMENTS for d in shape) or math.prod(shape) > MAX_ELEMENTS:
            raise MalformedHeaderError(f"{name}: shape {shape} holds more than 2^31 values")
        if code < SPARSE:
            tensors.append({"name": name, "shape": shape, "coding": "raw", "dtype": RAW_DTYPES[code]})
            continue
        h = {"name": name, "shape": shape, "coding": "sparse-range", "dtype": "float32",
             "entries": r.varint(), "live_rows": 0, "live_cols": 0, "stream_bytes": 0}
        if h["entries"]:
            h["live_rows"], h["live_cols"], h["stream_bytes"] = r.varint(), r.varint(), r.varint()
        tensors.append(h)
    if r.at != len(r.data):
        raise MalformedHeaderError(f"{len(r.data) - r.at} bytes after the header's last tensor")
    return {"model": model, "codebook": [float(x) for x in cb], "tensors": tensors}, cb

"""The JSON header of format versions 1 and 2 (``docs/FORMAT.md``, "Versions 1 and 2"): plain
JSON (version 1) or raw-deflated JSON (version 2), its schema and its checks."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np

from sws.format import sparsecode
from sws.format.errors import (MAX_CODEBOOK, MAX_ELEMENTS, MAX_HEADER_BYTES, ElementLimitError,
                               HeaderTooLargeError, MalformedHeaderError)

__all__ = ["SPARSE_FIELDS", "RAW_DTYPES", "f32_json", "encode", "parse"]

# the six integers of a sparse tensor's "sparse" list, in order
SPARSE_FIELDS = ("gap_bits", "entries", "gap_symbols", "index_symbols", "gap_stream_bits",
                 "index_stream_bits")
RAW_DTYPES = ("float32", "float64", "float16", "int64", "int32")


def f32_json(x: np.float32) -> float | str:
    """A float32 as the shortest JSON number that reads back to the same float32."""
    s = min(np.format_float_positional(np.float32(x), unique=True, trim="-"),
            np.format_float_scientific(np.float32(x), unique=True, trim="-"), key=len)
    if np.float32(float(s)) != np.float32(x):   # never seen; guards against double rounding
        s = repr(float(x))
    return float(s) if "." in s or "e" in s else int(s)


def encode(model: dict, cb: np.ndarray, tensors: list[dict], version: int) -> bytes:
    """The stored header: ``tensors`` as written in the file (name, shape, raw or sparse)."""
    header = {"model": model, "codebook": [f32_json(x) for x in cb], "tensors": tensors}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(text)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    if version == 1:
        return text
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9)   # raw deflate, no zlib wrapper
    return packer.compress(text) + packer.flush()


def _no_duplicates(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        raise MalformedHeaderError("header has a duplicate key")
    return d


def _int(h: dict, key: str, lo: int, hi: int) -> int:
    v = h.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise MalformedHeaderError(f"tensor field {key!r} must be an integer in {lo}..{hi}")
    return v


def _check(header) -> np.ndarray:
    """Validate the header schema; return the codebook as float32.

    Tensor entries are replaced by dicts with named fields: name, shape,
    coding ("raw" or "sparse-huffman"), dtype, and for sparse ones SPARSE_FIELDS.
    """
    if not isinstance(header, dict) or set(header) != {"model", "codebook", "tensors"}:
        raise MalformedHeaderError("header must hold exactly 'model', 'codebook' and 'tensors'")
    if not isinstance(header["model"], dict) or not isinstance(header["model"].get("name"), str):
        raise MalformedHeaderError("header 'model' must be an object with a 'name'")
    cbl = header["codebook"]
    if (not isinstance(cbl, list) or not 1 <= len(cbl) <= MAX_CODEBOOK
            or not all(type(x) in (int, float) and math.isfinite(x) for x in cbl)):
        raise MalformedHeaderError("header 'codebook' must be a list of 1..4096 finite numbers")
    with np.errstate(over="ignore"):
        cb = np.asarray(cbl, dtype=np.float64).astype(np.float32)
    if cb.view(np.uint32)[0] != 0:
        raise MalformedHeaderError("codebook entry 0 must be exactly 0")
    if not np.isfinite(cb).all():
        raise MalformedHeaderError("codebook entry beyond the float32 range")
    if (cb[1:] == 0).any() or np.unique(cb.view(np.uint32)).size != cb.size:
        raise MalformedHeaderError("codebook entries must be distinct, only entry 0 zero")
    if not isinstance(header["tensors"], list):
        raise MalformedHeaderError("header 'tensors' must be a list")
    names, norm = set(), []
    for h in header["tensors"]:
        if not isinstance(h, dict) or not isinstance(h.get("name"), str) or h["name"] in names:
            raise MalformedHeaderError("each tensor needs a unique string 'name'")
        names.add(h["name"])
        shape = h.get("shape")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(type(d) is int and 0 <= d < MAX_ELEMENTS for d in shape)
                or math.prod(shape) > MAX_ELEMENTS):
            raise MalformedHeaderError(f"{h['name']}: 'shape' must be a list of at most 8 sizes")
        if set(h) == {"name", "shape", "raw"}:
            if h["raw"] not in RAW_DTYPES:
                raise MalformedHeaderError(f"{h['name']}: unknown dtype {h['raw']!r}")
            norm.append({"name": h["name"], "shape": shape, "coding": "raw", "dtype": h["raw"]})
        elif set(h) == {"name", "shape", "sparse"}:
            v = h["sparse"]
            if not isinstance(v, list) or len(v) != len(SPARSE_FIELDS):
                raise MalformedHeaderError(f"{h['name']}: 'sparse' must list {len(SPARSE_FIELDS)} integers")
            f = dict(zip(SPARSE_FIELDS, v))
            gb = _int(f, "gap_bits", 1, sparsecode.MAX_GAP_BITS)
            _int(f, "entries", 0, 1 << 40)
            _int(f, "gap_symbols", 0, 1 << gb)
            _int(f, "index_symbols", 0, len(cb))
            _int(f, "gap_stream_bits", 0, 1 << 43)
            _int(f, "index_stream_bits", 0, 1 << 43)
            norm.append({"name": h["name"], "shape": shape, "coding": "sparse-huffman",
                         "dtype": "float32", **f})
        else:
            raise MalformedHeaderError(f"{h['name']}: needs exactly 'name', 'shape' and one of "
                                       "'raw' or 'sparse'")
    header["tensors"] = norm
    return cb


def _inflate(stored: bytes) -> bytes:
    """A version 2 header: exactly one raw deflate stream, at most MAX_HEADER_BYTES inflated."""
    unpacker = zlib.decompressobj(-15)
    try:
        text = unpacker.decompress(stored, MAX_HEADER_BYTES)
    except zlib.error as e:
        raise MalformedHeaderError(f"header is not a valid deflate stream ({e})") from None
    if not unpacker.eof and (unpacker.unconsumed_tail or len(text) >= MAX_HEADER_BYTES):
        raise HeaderTooLargeError(f"header inflates to more than {MAX_HEADER_BYTES} bytes")
    if not unpacker.eof or unpacker.unused_data:
        raise MalformedHeaderError("header's deflate stream is cut short or followed by other bytes")
    return text


def parse(stored: bytes, version: int, max_tensors: int, limit_hint: str) -> tuple[dict, np.ndarray]:
    """(header with normalised tensors, codebook) of a version 1 or 2 header."""
    text = _inflate(stored) if version == 2 else stored
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:   # ValueError: JSON, huge ints
        raise MalformedHeaderError(f"header is not valid JSON ({str(e)[:200]})") from None
    if isinstance(header, dict) and isinstance(header.get("tensors"), list) \
            and len(header["tensors"]) > max_tensors:
        raise ElementLimitError(f"file declares {len(header['tensors']):,} tensors, more than the "
                                f"limit of {max_tensors:,} {limit_hint}")
    return header, _check(header)

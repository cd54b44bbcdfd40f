"""The compressed model file (``.sws``): writing, reading, ``save`` and ``load``.

The layout is specified in ``docs/FORMAT.md``.  Version 3, what the writer writes::

    magic (8) | version u32 | header length varint | payload length varint
    | binary header | payloads, one per tensor in header order | CRC32 u32

Quantised tensors are range coded over their live submatrix (``sws.format.livecode``); every
other tensor is stored exactly as raw little-endian bytes.  Versions 1 and 2 (a JSON header,
Huffman-coded sparse rows: ``sws.format.jsonheader``, ``sws.format.sparsecode``) are still
read, and written on request.  No pickle.  Every way a file can be bad raises its own subclass
of ``FormatError``.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sws.errors import ConfigError
from sws.format import binheader, huffman, jsonheader, livecode, rangecoder, sparsecode
from sws.format.errors import (MAX_CODEBOOK, MAX_HEADER_BYTES, BadMagicError,
                               ChecksumError, ElementLimitError, FormatError, HeaderTooLargeError,
                               InconsistentPayloadError, MalformedHeaderError, RoundTripError,
                               TrailingDataError, TruncatedFileError, UnsupportedVersionError)
from sws.format.jsonheader import SPARSE_FIELDS

__all__ = ["MAGIC", "VERSION", "MAX_HEADER_BYTES", "DEFAULT_MAX_ELEMENTS", "MAX_ELEMENTS_ENV",
           "FormatError", "BadMagicError", "UnsupportedVersionError", "HeaderTooLargeError",
           "MalformedHeaderError", "TruncatedFileError", "TrailingDataError", "ChecksumError",
           "InconsistentPayloadError", "ElementLimitError", "RoundTripError", "ConfigError", "Decoded", "encode",
           "decode", "read", "read_header", "max_elements_limit", "SPARSE_FIELDS", "STORABLE_DTYPES"]

MAGIC = b"\x89SWS\r\n\x1a\n"   # PNG-style: catches text-mode and 7-bit transfers
VERSION = 3                    # what the writer writes: binary header, range-coded tensors
READABLE_VERSIONS = (1, 2, 3)  # 1: JSON header, 2: raw-deflated JSON header; both Huffman coded
# decoded values of one file, all tensors together, unless raised (``max_elements=`` or the
# environment variable): 32 Mi values, 128 MiB as float32, so that no file of 1 MB costs
# more than 500 MB to load (docs/FORMAT.md, "Bounded work")
DEFAULT_MAX_ELEMENTS = 1 << 25
MAX_ELEMENTS_ENV = "SWS_MAX_ELEMENTS"
# every tensor has a fixed cost (tables, a few numpy calls): a file may hold at most
# max(MIN_MAX_TENSORS, limit // VALUES_PER_TENSOR) tensors, 2048 under the default limit
MIN_MAX_TENSORS = 2048
VALUES_PER_TENSOR = 16384
_PREAMBLE = struct.Struct("<8sIIQ")      # versions 1 and 2
_START = struct.Struct("<8sI")           # version 3: magic and version, then two varints
_RAW_DTYPES = {"float32": (torch.float32, "<f4"), "float64": (torch.float64, "<f8"),
               "float16": (torch.float16, "<f2"), "int64": (torch.int64, "<i8"),
               "int32": (torch.int32, "<i4")}
_DTYPE_NAMES = {t: name for name, (t, _) in _RAW_DTYPES.items()}
STORABLE_DTYPES = frozenset(_DTYPE_NAMES)   # what a raw tensor may be (a quantised one: float32, float64)


@dataclass
class Decoded:
    """A decoded file: its header, codebook and tensors (in file order)."""

    header: dict
    codebook: np.ndarray
    tensors: dict[str, torch.Tensor]


def _codebook_indices(name: str, t: torch.Tensor, codebook: np.ndarray) -> np.ndarray:
    """Codebook index of every element, matched on the exact float32 bit pattern.  A float64
    tensor is stored so when every value is a float32 number (a codebook entry is); it loads
    back exactly into a float64 module (``sws.load`` copies into the module's dtype)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.float64:
        t32 = t.float()
        if not torch.equal(t32.double(), t):
            v = t.reshape(-1)[int((t32.double() != t).reshape(-1).nonzero()[0])].item()
            raise ValueError(f"{name}: value {v!r} is not a codebook entry (not even a float32 number)")
        t = t32
    elif t.dtype != torch.float32:
        raise ValueError(f"{name}: quantised tensors must be float32 or float64, not {t.dtype}")
    bits = t.numpy().reshape(-1).view(np.uint32)
    cb = codebook.view(np.uint32)
    order = np.argsort(cb, kind="stable")
    where = np.clip(np.searchsorted(cb[order], bits), 0, len(cb) - 1)
    idx = order[where]
    bad = cb[idx] != bits
    if bad.any():
        v = t.reshape(-1)[int(np.flatnonzero(bad)[0])].item()
        raise ValueError(f"{name}: value {v!r} is not a codebook entry")
    return idx


def encode(tensors: dict[str, torch.Tensor], codebook, quantized, model: dict, *,
           version: int = VERSION) -> bytes:
    """The bytes of a ``.sws`` file.

    Args:
      tensors: state dict, in the order to store.
      codebook: float32 values; entry 0 must be exactly 0.0 and values distinct.
      quantized: names of the tensors whose every value is a codebook entry; they
        are stored sparse and entropy coded, all others exactly.
      model: JSON-serialisable description, at least ``{"name": ...}``.
      version: 3 (the default); 2 or 1 write the older Huffman layout (for comparisons).
    """
    if version not in READABLE_VERSIONS:
        raise ValueError(f"cannot write format version {version}")
    cb = np.asarray(codebook, dtype=np.float32).reshape(-1)
    if not 1 <= cb.size <= MAX_CODEBOOK or cb.view(np.uint32)[0] != 0:
        raise ValueError("codebook needs 1..4096 entries, entry 0 exactly +0.0")
    if (len(set(cb.view(np.uint32).tolist())) != cb.size or not np.isfinite(cb).all()
            or (cb[1:] == 0).any()):
        raise ValueError("codebook entries must be finite and distinct, only entry 0 zero")
    quantized = set(quantized)
    missing = quantized - set(tensors)
    if missing:
        raise ValueError(f"quantised tensors not in the state dict: {sorted(missing)}")
    entries, payloads = [], []
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        h = {"name": name, "shape": list(t.shape)}
        if name in quantized:
            idx = _codebook_indices(name, t, cb)
            if version == 3:
                fields, stream = livecode.encode_tensor(idx, h["shape"], cb.size)
                h.update(coding="sparse-range", dtype="float32", **fields)
                payloads.append(stream)
            else:
                code = sparsecode.encode_layer(idx, cb.size)
                h["sparse"] = [code.header()[k] for k in SPARSE_FIELDS]
                payloads.append(code.payload())
        else:
            if t.dtype not in _DTYPE_NAMES:
                raise ValueError(f"{name}: dtype {t.dtype} cannot be stored")
            if version == 3:
                h.update(coding="raw", dtype=_DTYPE_NAMES[t.dtype])
            else:
                h["raw"] = _DTYPE_NAMES[t.dtype]
            payloads.append(t.numpy().astype(_RAW_DTYPES[_DTYPE_NAMES[t.dtype]][1]).tobytes())
        entries.append(h)
    plen = sum(map(len, payloads))
    if version == 3:
        hb = binheader.encode(model, cb, entries)
        if len(hb) > MAX_HEADER_BYTES:
            raise ValueError(f"header of {len(hb)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
        start = _START.pack(MAGIC, 3) + binheader.varint(len(hb)) + binheader.varint(plen)
    else:
        hb = jsonheader.encode(model, cb, entries, version)
        start = _PREAMBLE.pack(MAGIC, version, len(hb), plen)
    body = start + hb + b"".join(payloads)
    return body + struct.pack("<I", zlib.crc32(body))


def _payload_size(h: dict) -> int:
    if h["coding"] == "raw":
        return math.prod(h["shape"]) * np.dtype(_RAW_DTYPES[h["dtype"]][1]).itemsize
    if h["coding"] == "sparse-range":
        return h["stream_bytes"]
    return sparsecode.payload_size(h)


def _check_sparse_sizes(h: dict, n_index: int) -> None:
    """What a sparse tensor's streams can hold, checked before anything is decoded.

    Version 1-2: every entry takes its own position (gap >= 0) and 1..15 bits in each stream,
    so the entries are bounded by the tensor's size and by each stream's bits (and those by
    the bytes present); an entry needs a code in both tables.  Version 3: ``livecode.check_fields``.
    """
    if h["coding"] == "sparse-range":
        problem = livecode.check_fields(h, n_index)
        if problem:
            raise InconsistentPayloadError(f"{h['name']}: {problem}")
        return
    n, k = math.prod(h["shape"]), h["entries"]
    if k > n:
        raise InconsistentPayloadError(f"{h['name']}: {k} entries for {n} values")
    for key in ("gap_stream_bits", "index_stream_bits"):
        if not k <= h[key] <= huffman.MAX_CODE_LENGTH * k:
            raise InconsistentPayloadError(f"{h['name']}: a stream of {h[key]} bits cannot hold "
                                           f"{k} codes of 1..{huffman.MAX_CODE_LENGTH} bits")
    if k and not (h["gap_symbols"] and h["index_symbols"]):
        raise InconsistentPayloadError(f"{h['name']}: {k} entries but an empty code table")


def _lengths(data: memoryview, version: int) -> tuple[int, int, int]:
    """(header start, header length, payload length) from the preamble."""
    if version < 3:
        if len(data) < _PREAMBLE.size:
            raise TruncatedFileError(f"file of {len(data)} bytes ends inside the preamble")
        _, _, hlen, plen = _PREAMBLE.unpack_from(data)
        return _PREAMBLE.size, hlen, plen
    r = binheader.Reader(data, TruncatedFileError, _START.size)
    try:
        hlen = r.varint()
        plen = r.varint()
    except TruncatedFileError as e:
        if r.at >= len(data):
            raise TruncatedFileError(f"file of {len(data)} bytes ends inside the preamble") from None
        raise MalformedHeaderError(f"preamble: {e}") from None
    return r.at, hlen, plen


def read_header(data: bytes, *, max_elements: int | None = None) -> tuple[dict, np.ndarray, memoryview]:
    """Check preamble, lengths, checksum and header; return (header, codebook, payload).

    ``max_elements`` (see ``max_elements_limit``) bounds the number of tensors here, at
    ``max(2048, max_elements // 16384)``; ``decode`` bounds the values.
    """
    limit = max_elements_limit(max_elements)
    data = memoryview(data)
    if len(data) < len(MAGIC) or bytes(data[:len(MAGIC)]) != MAGIC:
        raise BadMagicError("not an .sws file (bad magic number)")
    if len(data) < _START.size:
        raise TruncatedFileError(f"file of {len(data)} bytes ends inside the preamble")
    _, version = _START.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersionError(f"format version {version} not supported (this reader: "
                                      f"{', '.join(map(str, READABLE_VERSIONS))})")
    hstart, hlen, plen = _lengths(data, version)
    if hlen > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"header of {hlen} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    need = hstart + hlen + plen + 4
    if len(data) < need:
        raise TruncatedFileError(f"file of {len(data)} bytes is shorter than the {need} it declares")
    if len(data) > need:
        raise TrailingDataError(f"{len(data) - need} bytes after the checksum")
    (crc,) = struct.unpack_from("<I", data, need - 4)
    if zlib.crc32(data[:need - 4]) != crc:
        raise ChecksumError("checksum mismatch: the file is corrupt")
    stored = bytes(data[hstart:hstart + hlen])
    max_tensors = max(MIN_MAX_TENSORS, limit // VALUES_PER_TENSOR)
    hint = (f"(max_elements // {VALUES_PER_TENSOR}, at least {MIN_MAX_TENSORS}); for a model "
            f"this large pass max_elements= or set {MAX_ELEMENTS_ENV}")
    if version == 3:
        header, cb = binheader.parse(stored, max_tensors, hint)
    else:
        header, cb = jsonheader.parse(stored, version, max_tensors, hint)
    sizes = [_payload_size(h) for h in header["tensors"]]
    if sum(sizes) != plen:
        raise InconsistentPayloadError(f"tensors declare {sum(sizes)} payload bytes, preamble {plen}")
    for h in header["tensors"]:
        if h["coding"] != "raw":
            _check_sparse_sizes(h, len(cb))
    return header, cb, data[hstart + hlen:need - 4]


def sparse_entries(part, h: dict, n_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions and codebook indices of a sparse tensor's non-zeros, from its payload
    (either coding); memory O(entries) whatever the tensor's size."""
    try:
        if h["coding"] == "sparse-range":
            return livecode.decode_entries(part, h, n_index)
        return sparsecode.decode_layer(part, h, math.prod(h["shape"]), n_index)
    except (huffman.CodeError, rangecoder.CoderError) as e:
        raise InconsistentPayloadError(f"{h['name']}: {e}") from None


def max_elements_limit(max_elements: int | None = None) -> int:
    """The limit on one file's decoded values: ``max_elements`` if given, else the environment
    variable ``SWS_MAX_ELEMENTS``, else ``DEFAULT_MAX_ELEMENTS`` (2**25)."""
    if max_elements is None:
        env = os.environ.get(MAX_ELEMENTS_ENV, "").strip()
        if not env:
            return DEFAULT_MAX_ELEMENTS
        try:
            max_elements = int(env)
        except ValueError:
            raise ConfigError(f"{MAX_ELEMENTS_ENV}={env!r}: not a whole number of values") from None
        where = MAX_ELEMENTS_ENV
    else:
        where = "max_elements"
    if type(max_elements) is not int or max_elements < 0:
        raise ConfigError(f"{where} must be a non-negative integer, not {max_elements!r}")
    return max_elements


def _check_elements(header: dict, limit: int) -> None:
    total = sum(math.prod(h["shape"]) for h in header["tensors"])
    if total > limit:
        raise ElementLimitError(
            f"file declares {total:,} values, more than the limit of {limit:,} (a protection "
            f"against decompression bombs); for a model this large pass max_elements= or set "
            f"{MAX_ELEMENTS_ENV}")


def decode(data: bytes, *, max_elements: int | None = None) -> Decoded:
    """Decode a whole file; every failure raises a ``FormatError`` subclass.

    Work and memory are bounded by the file's bytes and its declared values, which may not
    exceed ``max_elements`` (default: ``max_elements_limit()``, 2**25 unless the environment
    variable ``SWS_MAX_ELEMENTS`` says otherwise; more raises ``ElementLimitError`` before
    anything is allocated).
    """
    limit = max_elements_limit(max_elements)
    header, cb, payload = read_header(data, max_elements=limit)
    _check_elements(header, limit)
    parts, offset = [], 0
    for h in header["tensors"]:        # every stream decoded (checked) before any tensor is built
        size = _payload_size(h)
        part, offset = payload[offset:offset + size], offset + size
        parts.append(part if h["coding"] == "raw" else sparse_entries(part, h, len(cb)))
    tensors = {}
    for h, part in zip(header["tensors"], parts):
        if h["coding"] == "raw":
            torch_dtype, np_dtype = _RAW_DTYPES[h["dtype"]]
            arr = np.frombuffer(part, dtype=np_dtype).astype(np_dtype[1:], copy=True)
        else:
            pos, idx = part
            arr = np.zeros(math.prod(h["shape"]), dtype=np.float32)
            if pos.size:
                arr[pos] = cb[idx]
        tensors[h["name"]] = torch.from_numpy(arr.reshape(h["shape"]))
    return Decoded(header, cb, tensors)


def _read_bytes(path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from None


def read(path, *, max_elements: int | None = None) -> Decoded:
    """Decode the file at ``path``; errors name the file.  ``max_elements``: as in ``decode``."""
    limit = max_elements_limit(max_elements)
    data = _read_bytes(path)
    try:
        return decode(data, max_elements=limit)
    except FormatError as e:
        raise type(e)(f"{path}: {e}") from None

"""The compressed model file (``.sws``): writing, reading, ``save`` and ``load``.

The layout is specified in ``docs/FORMAT.md``::

    magic (8) | version u32 | header length u32 | payload length u64
    | JSON header (version 2: raw-deflated) | payloads, one per tensor in header order | CRC32 u32

Quantised tensors use the sparse Huffman layout of ``sws.format.sparsecode``; every
other tensor is stored exactly as raw little-endian bytes.  No pickle.
Every way a file can be bad raises its own subclass of ``FormatError``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sws.format import huffman, sparsecode
from sws.errors import ConfigError, SwsError

__all__ = ["MAGIC", "VERSION", "MAX_HEADER_BYTES", "DEFAULT_MAX_ELEMENTS", "MAX_ELEMENTS_ENV",
           "FormatError", "BadMagicError", "UnsupportedVersionError", "HeaderTooLargeError",
           "MalformedHeaderError", "TruncatedFileError", "TrailingDataError", "ChecksumError",
           "InconsistentPayloadError", "ElementLimitError", "Decoded", "encode", "decode", "read",
           "read_header", "max_elements_limit"]

MAGIC = b"\x89SWS\r\n\x1a\n"   # PNG-style: catches text-mode and 7-bit transfers
VERSION = 2                    # what the writer writes: the header raw-deflated (RFC 1951)
READABLE_VERSIONS = (1, 2)     # version 1: the same with the header as plain JSON
MAX_HEADER_BYTES = 1 << 20     # 1 MiB, stored and inflated; a LeNet header is 800 B, 350 deflated
MAX_ELEMENTS = 1 << 31         # per tensor
MAX_CODEBOOK = 1 << 12
# decoded values of one file, all tensors together, unless raised (``max_elements=`` or the
# environment variable): 32 Mi values, 128 MiB as float32, so that no file of 1 MB costs
# more than 500 MB to load (docs/FORMAT.md, "Bounded work")
DEFAULT_MAX_ELEMENTS = 1 << 25
MAX_ELEMENTS_ENV = "SWS_MAX_ELEMENTS"
# every tensor has a fixed cost (tables, a few numpy calls): a file may hold at most
# max(MIN_MAX_TENSORS, limit // VALUES_PER_TENSOR) tensors, 2048 under the default limit
MIN_MAX_TENSORS = 2048
VALUES_PER_TENSOR = 16384
_PREAMBLE = struct.Struct("<8sIIQ")
_RAW_DTYPES = {"float32": (torch.float32, "<f4"), "float64": (torch.float64, "<f8"),
               "float16": (torch.float16, "<f2"), "int64": (torch.int64, "<i8"),
               "int32": (torch.int32, "<i4")}
_DTYPE_NAMES = {t: name for name, (t, _) in _RAW_DTYPES.items()}
# the six integers of a sparse tensor's "sparse" list, in order
SPARSE_FIELDS = ("gap_bits", "entries", "gap_symbols", "index_symbols", "gap_stream_bits",
                 "index_stream_bits")


class FormatError(SwsError):
    """A ``.sws`` file that cannot be read; each failure mode has a subclass."""


class BadMagicError(FormatError):
    """The file does not start with the ``.sws`` magic number."""


class UnsupportedVersionError(FormatError):
    """The file's format version is not one this reader knows."""


class HeaderTooLargeError(FormatError):
    """The declared JSON header exceeds ``MAX_HEADER_BYTES``."""


class MalformedHeaderError(FormatError):
    """The header is not valid JSON or breaks the header schema."""


class TruncatedFileError(FormatError):
    """The file is shorter than its preamble and declared lengths."""


class TrailingDataError(FormatError):
    """The file has bytes after its checksum."""


class ChecksumError(FormatError):
    """The CRC32 of the file does not match its stored checksum."""


class InconsistentPayloadError(FormatError):
    """Payloads that do not match the header: sizes, shapes, codes or positions."""


class ElementLimitError(FormatError):
    """The file declares more values than the reader's limit (a decompression bomb, or a
    really large model: raise the limit with ``max_elements=`` or ``SWS_MAX_ELEMENTS``)."""


@dataclass
class Decoded:
    """A decoded file: its header, codebook and tensors (in file order)."""

    header: dict
    codebook: np.ndarray
    tensors: dict[str, torch.Tensor]


def _f32_json(x: np.float32) -> float | str:
    """A float32 as the shortest JSON number that reads back to the same float32."""
    s = min(np.format_float_positional(np.float32(x), unique=True, trim="-"),
            np.format_float_scientific(np.float32(x), unique=True, trim="-"), key=len)
    if np.float32(float(s)) != np.float32(x):   # never seen; guards against double rounding
        s = repr(float(x))
    return float(s) if "." in s or "e" in s else int(s)


def _codebook_indices(name: str, t: torch.Tensor, codebook: np.ndarray) -> np.ndarray:
    """Codebook index of every element, matched on the exact float32 bit pattern."""
    if t.dtype != torch.float32:
        raise ValueError(f"{name}: quantised tensors must be float32, not {t.dtype}")
    bits = t.detach().cpu().contiguous().numpy().reshape(-1).view(np.uint32)
    cb = codebook.view(np.uint32)
    order = np.argsort(cb, kind="stable")
    where = np.clip(np.searchsorted(cb[order], bits), 0, len(cb) - 1)
    idx = order[where]
    bad = cb[idx] != bits
    if bad.any():
        v = t.reshape(-1)[int(np.flatnonzero(bad)[0])].item()
        raise ValueError(f"{name}: value {v!r} is not a codebook entry")
    return idx


def encode(tensors: dict[str, torch.Tensor], codebook, quantized, model: dict) -> bytes:
    """The bytes of a ``.sws`` file.

    Args:
      tensors: state dict, in the order to store.
      codebook: float32 values; entry 0 must be exactly 0.0 and values distinct.
      quantized: names of the tensors whose every value is a codebook entry; they
        are stored sparse and Huffman coded, all others exactly.
      model: JSON-serialisable description, at least ``{"name": ...}``.
    """
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
            code = sparsecode.encode_layer(_codebook_indices(name, t, cb), cb.size)
            h["sparse"] = [code.header()[k] for k in SPARSE_FIELDS]
            payloads.append(code.payload())
        else:
            if t.dtype not in _DTYPE_NAMES:
                raise ValueError(f"{name}: dtype {t.dtype} cannot be stored")
            h["raw"] = _DTYPE_NAMES[t.dtype]
            payloads.append(t.numpy().astype(_RAW_DTYPES[h["raw"]][1]).tobytes())
        entries.append(h)
    header = {"model": model, "codebook": [_f32_json(x) for x in cb], "tensors": entries}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(text)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9)   # raw deflate, no zlib wrapper
    hb = packer.compress(text) + packer.flush()
    body = _PREAMBLE.pack(MAGIC, VERSION, len(hb), sum(map(len, payloads))) + hb + b"".join(payloads)
    return body + struct.pack("<I", zlib.crc32(body))


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


def _check_header(header) -> np.ndarray:
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
            if h["raw"] not in _RAW_DTYPES:
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


def _payload_size(h: dict) -> int:
    if h["coding"] == "raw":
        return math.prod(h["shape"]) * np.dtype(_RAW_DTYPES[h["dtype"]][1]).itemsize
    return sparsecode.payload_size(h)


def _check_sparse_sizes(h: dict) -> None:
    """What a sparse tensor's streams can hold, checked before anything is decoded.

    Every entry takes its own position (gap >= 0) and 1..15 bits in each stream, so the
    entries are bounded by the tensor's size and by each stream's bits (and those by the
    bytes present); an entry needs a code in both tables.
    """
    n, k = math.prod(h["shape"]), h["entries"]
    if k > n:
        raise InconsistentPayloadError(f"{h['name']}: {k} entries for {n} values")
    for key in ("gap_stream_bits", "index_stream_bits"):
        if not k <= h[key] <= huffman.MAX_CODE_LENGTH * k:
            raise InconsistentPayloadError(f"{h['name']}: a stream of {h[key]} bits cannot hold "
                                           f"{k} codes of 1..{huffman.MAX_CODE_LENGTH} bits")
    if k and not (h["gap_symbols"] and h["index_symbols"]):
        raise InconsistentPayloadError(f"{h['name']}: {k} entries but an empty code table")


def _inflate_header(stored: bytes) -> bytes:
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


def read_header(data: bytes, *, max_elements: int | None = None) -> tuple[dict, np.ndarray, memoryview]:
    """Check preamble, lengths, checksum and header; return (header, codebook, payload).

    ``max_elements`` (see ``max_elements_limit``) bounds the number of tensors here, at
    ``max(2048, max_elements // 16384)``; ``decode`` bounds the values.
    """
    limit = max_elements_limit(max_elements)
    data = memoryview(data)
    if len(data) < len(MAGIC) or bytes(data[:len(MAGIC)]) != MAGIC:
        raise BadMagicError("not an .sws file (bad magic number)")
    if len(data) < _PREAMBLE.size:
        raise TruncatedFileError(f"file of {len(data)} bytes ends inside the preamble")
    _, version, hlen, plen = _PREAMBLE.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersionError(f"format version {version} not supported (this reader: "
                                      f"{', '.join(map(str, READABLE_VERSIONS))})")
    if hlen > MAX_HEADER_BYTES:
        raise HeaderTooLargeError(f"header of {hlen} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    need = _PREAMBLE.size + hlen + plen + 4
    if len(data) < need:
        raise TruncatedFileError(f"file of {len(data)} bytes is shorter than the {need} it declares")
    if len(data) > need:
        raise TrailingDataError(f"{len(data) - need} bytes after the checksum")
    (crc,) = struct.unpack_from("<I", data, need - 4)
    if zlib.crc32(data[:need - 4]) != crc:
        raise ChecksumError("checksum mismatch: the file is corrupt")
    text = bytes(data[_PREAMBLE.size:_PREAMBLE.size + hlen])
    if version == 2:
        text = _inflate_header(text)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:   # ValueError: JSON, huge ints
        raise MalformedHeaderError(f"header is not valid JSON ({str(e)[:200]})") from None
    max_tensors = max(MIN_MAX_TENSORS, limit // VALUES_PER_TENSOR)
    if isinstance(header, dict) and isinstance(header.get("tensors"), list) \
            and len(header["tensors"]) > max_tensors:
        raise ElementLimitError(f"file declares {len(header['tensors']):,} tensors, more than the "
                                f"limit of {max_tensors:,} (max_elements // {VALUES_PER_TENSOR}, "
                                f"at least {MIN_MAX_TENSORS}); for a model this large pass "
                                f"max_elements= or set {MAX_ELEMENTS_ENV}")
    cb = _check_header(header)
    sizes = [_payload_size(h) for h in header["tensors"]]
    if sum(sizes) != plen:
        raise InconsistentPayloadError(f"tensors declare {sum(sizes)} payload bytes, preamble {plen}")
    for h in header["tensors"]:
        if h["coding"] != "raw":
            _check_sparse_sizes(h)
    return header, cb, data[_PREAMBLE.size + hlen:need - 4]


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
    tensors, offset = {}, 0
    for h in header["tensors"]:
        size = _payload_size(h)
        part, offset = payload[offset:offset + size], offset + size
        n = math.prod(h["shape"])
        if h["coding"] == "raw":
            torch_dtype, np_dtype = _RAW_DTYPES[h["dtype"]]
            arr = np.frombuffer(part, dtype=np_dtype).astype(np_dtype[1:], copy=True)
        else:
            try:
                pos, idx = sparsecode.decode_layer(part, h, n, len(cb))
            except huffman.CodeError as e:
                raise InconsistentPayloadError(f"{h['name']}: {e}") from None
            arr = np.zeros(n, dtype=np.float32)
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

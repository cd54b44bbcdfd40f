"""Adversarial ``.sws`` files: well-formed on the outside, hostile inside.

Versions 1 and 2 here; version 3 (binary header, range-coded streams) in
``tests/test_fuzz_format_v3.py``, judged by the same ``judge``.

Every file built here has a valid checksum, a valid deflate stream (version 2) or plain
JSON (version 1) and the preamble's lengths right, so the reader's deeper checks are what
stand between it and the hostile header: huge and negative shapes, entry counts that
disagree with the streams, code tables that are not prefix codes, over-long codes, gap
widths at the limits, duplicate and missing names, codebooks with NaN, infinities or two
zeros, bombs that declare billions of values in a few bytes.  Each must decode to sane
tensors or raise a named ``FormatError`` subclass, in bounded time and memory, and
``sws inspect``'s statistics must do the same.

The suite runs a fast subset (``FUZZ_EXAMPLES``); ``benchmarks/fuzz_bench.py`` runs 10,000
cases with the same generator and records the outcomes.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sws.format import container as ff
from sws.format import huffman, sparsecode
from sws.format.stats import file_stats

FUZZ_EXAMPLES = int(os.environ.get("SWS_FUZZ_EXAMPLES", "300"))
MAX_SECONDS = 2.0            # per file, decode and statistics together (a loaded 2-core machine)
BASE_MEMORY = 48 << 20       # bytes traced beyond the decoded tensors themselves


# --- building files ------------------------------------------------------------------------

def build(header, payload: bytes, version: int = 2, text: bytes | None = None) -> bytes:
    """A file with a valid checksum around ``header`` (or the JSON ``text`` as given)."""
    if text is None:
        text = json.dumps(header, separators=(",", ":")).encode()
    if version == 2:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        text = packer.compress(text) + packer.flush()
    body = struct.pack("<8sIIQ", ff.MAGIC, version, len(text), len(payload)) + text + payload
    return body + struct.pack("<I", zlib.crc32(body))


def split(data: bytes) -> tuple[dict, list[bytes]]:
    """(header, per-tensor payloads) of a valid file written by ``ff.encode``."""
    header, _, payload = ff.read_header(data)
    raw = json.loads(zlib.decompress(data[24:24 + struct.unpack_from("<I", data, 12)[0]], -15))
    parts, offset = [], 0
    for h in header["tensors"]:
        size = ff._payload_size(h)
        parts.append(bytes(payload[offset:offset + size]))
        offset += size
    return raw, parts


def base_model(seed: int) -> tuple[dict, list[bytes]]:
    """A small valid model: 1..4 tensors, sparse or raw, of random shapes and densities."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 40))
    cb = np.unique(np.float32(rng.choice([-1, 1], k) * rng.uniform(1e-3, 2, k)))
    cb = np.concatenate([[0.0], cb[cb != 0]]).astype(np.float32)
    tensors, quantized = {}, []
    for i in range(int(rng.integers(1, 5))):
        shape = tuple(int(d) for d in rng.integers(0, 9, int(rng.integers(0, 4))))
        n = math.prod(shape)
        if rng.random() < 0.7:
            density = rng.choice([0.0, 0.02, 0.3, 1.0])
            idx = np.where(rng.random(n) < density, rng.integers(1, len(cb), n), 0)
            tensors[f"{i}.weight"] = torch.from_numpy(cb[idx].reshape(shape))
            quantized.append(f"{i}.weight")
        else:
            dtype = [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32][int(rng.integers(5))]
            tensors[f"{i}.bias"] = (torch.randn(shape) * 10).to(dtype)
    return split(ff.encode(tensors, cb, quantized, {"name": "fuzz"}, version=2))


# --- hostile edits -----------------------------------------------------------------------

HUGE_SHAPES = [[2 ** 31], [2 ** 16, 2 ** 15], [2 ** 31 - 1], [2 ** 25], [2 ** 25 + 1], [2 ** 13, 2 ** 12],
               [-1], [3, -2], [2 ** 40], [2 ** 63], [10 ** 30], [1.5], [True], ["4"], [[2]], [], [0],
               [1] * 9, [2] * 8, None, {"a": 1}, "3x3"]
ODD = [None, "1", 1.5, True, [], {}, -1]


def _sparse(header):
    return [i for i, h in enumerate(header["tensors"]) if isinstance(h, dict) and "sparse" in h]


def _any(header):
    return list(range(len(header["tensors"])))


@st.composite
def edits(draw, header, parts):
    """One hostile edit of (header, parts) in place; returns its name."""
    sparse, every = _sparse(header), _any(header)
    kinds = ["shape", "name", "keys", "raw_dtype", "codebook", "model", "top", "tensors",
             "payload_size", "bomb"]
    if sparse:
        kinds += ["entries", "gap_bits", "table_size", "stream_bits", "sparse_list",
                  "code_table", "stream_bytes", "fillers"] * 2
    kind = draw(st.sampled_from(kinds))
    if kind == "shape" and every:
        i = draw(st.sampled_from(every))
        header["tensors"][i]["shape"] = draw(st.sampled_from(HUGE_SHAPES))
    elif kind == "bomb":
        # every sparse tensor declares a huge size; its entries stay valid (trailing zeros)
        size = draw(st.sampled_from([2 ** 31, 2 ** 30, 2 ** 26, 2 ** 25, 2 ** 24]))
        for i in sparse or every:
            header["tensors"][i]["shape"] = [size // 1024, 1024]
    elif kind == "entries":
        i = draw(st.sampled_from(sparse))
        v = header["tensors"][i]["sparse"]
        n = math.prod(header["tensors"][i]["shape"])
        v[1] = draw(st.sampled_from([0, 1, v[1] - 1, v[1] + 1, 2 * v[1], n, n + 1, 2 ** 31, 2 ** 40,
                                     2 ** 40 + 1, -1, 1.0, "2", None]))
    elif kind == "gap_bits":
        i = draw(st.sampled_from(sparse))
        header["tensors"][i]["sparse"][0] = draw(st.sampled_from([0, 1, 2, 11, 12, 13, -1, 2 ** 31, 12.0]))
    elif kind == "table_size":
        i = draw(st.sampled_from(sparse))
        v = header["tensors"][i]["sparse"]
        j = draw(st.sampled_from([2, 3]))
        if j == 2:   # an earlier edit may have left gap_bits anything
            limit = 2 ** v[0] if type(v[0]) is int and 0 <= v[0] <= 16 else 4096
        else:
            limit = len(header["codebook"]) if isinstance(header["codebook"], list) else 1
        v[j] = draw(st.sampled_from([0, 1, limit, limit + 1, 4096, 4097, v[j] + 1, v[j] - 1, -1]))
    elif kind == "stream_bits":
        i = draw(st.sampled_from(sparse))
        v = header["tensors"][i]["sparse"]
        j = draw(st.sampled_from([4, 5]))
        e = v[1] if type(v[1]) is int else 1
        v[j] = draw(st.sampled_from([0, 1, v[j] - 1, v[j] + 1, v[j] + 8, 8 * v[j], e, e - 1, 15 * e,
                                     15 * e + 1, 2 ** 43, 2 ** 43 + 1]))
    elif kind == "sparse_list":
        i = draw(st.sampled_from(sparse))
        v = header["tensors"][i]["sparse"]
        header["tensors"][i]["sparse"] = draw(st.sampled_from([v[:5], v + [0], [], "x", None,
                                                              dict(zip("abcdef", v))]))
    elif kind == "code_table":
        i = draw(st.sampled_from(sparse))
        h, p = header["tensors"][i], bytearray(parts[i])
        gap_bytes, idx_bytes = (h["sparse"][2] + 1) // 2, (h["sparse"][3] + 1) // 2
        lo, hi = draw(st.sampled_from([(0, gap_bytes), (gap_bytes, gap_bytes + idx_bytes)]))
        how = draw(st.sampled_from(["oversubscribed", "over-long", "empty", "random", "odd padding"]))
        for b in range(lo, hi):
            if how == "oversubscribed":
                p[b] = 0x11
            elif how == "over-long":
                p[b] = 0xFF
            elif how == "empty":
                p[b] = 0
            elif how == "random":
                p[b] = draw(st.integers(0, 255))
        if how == "odd padding" and hi > lo:
            p[hi - 1] |= 1
        parts[i] = bytes(p)
    elif kind == "stream_bytes":
        i = draw(st.sampled_from(sparse))
        h, p = header["tensors"][i], bytearray(parts[i])
        start = (h["sparse"][2] + 1) // 2 + (h["sparse"][3] + 1) // 2
        for _ in range(draw(st.integers(1, 8))):
            if len(p) > start:
                p[draw(st.integers(start, len(p) - 1))] = draw(st.integers(0, 255))
        parts[i] = bytes(p)
    elif kind == "fillers":
        # rewrite a tensor as `entries` fillers of the widest gap, one code each: addresses far
        i = draw(st.sampled_from(sparse))
        h = header["tensors"][i]
        gb, e = draw(st.sampled_from([1, 10, 12])), draw(st.sampled_from([1, 7, 8, 1000, 20000]))
        top = (1 << gb) - 1
        gl = [0] * (top + 1)
        gl[top], gl[0] = 1, 1
        stream = b"\xff" * (e // 8) + (bytes([(0xFF << (8 - e % 8)) & 0xFF]) if e % 8 else b"")
        table = huffman.pack_lengths(gl) + huffman.pack_lengths([1, 1])
        n = draw(st.sampled_from([e * (top + 1), e * (top + 1) - 1, 2 ** 25, 2 ** 31]))
        h["shape"] = [n]
        h["sparse"] = [gb, e, top + 1, 2, e, e]
        parts[i] = table + stream + stream
    elif kind == "name" and every:
        i = draw(st.sampled_from(every))
        how = draw(st.sampled_from(["duplicate", "missing", "odd", "empty"]))
        if how == "duplicate" and len(every) > 1:
            header["tensors"][i]["name"] = header["tensors"][(i + 1) % len(every)]["name"]
        elif how == "missing":
            header["tensors"][i].pop("name")
        elif how == "odd":
            header["tensors"][i]["name"] = draw(st.sampled_from(ODD))
        else:
            header["tensors"][i]["name"] = ""
    elif kind == "keys" and every:
        i = draw(st.sampled_from(every))
        h = header["tensors"][i]
        how = draw(st.sampled_from(["extra", "no coding", "both codings", "no shape"]))
        if how == "extra":
            h["extra"] = 1
        elif how == "no coding":
            h.pop("sparse", None), h.pop("raw", None)
        elif how == "both codings":
            h["raw"], h["sparse"] = "float32", h.get("sparse", [1, 0, 0, 0, 0, 0])
        else:
            h.pop("shape")
    elif kind == "raw_dtype" and every:
        i = draw(st.sampled_from(every))
        header["tensors"][i].pop("sparse", None)
        header["tensors"][i]["raw"] = draw(st.sampled_from(["float8", "uint8", "bool", 1, None,
                                                            "float32", "int64", "float16"]))
    elif kind == "codebook":
        header["codebook"] = draw(st.sampled_from([
            [0, float("nan")], [0, float("inf")], [0, float("-inf")], [0, 1e39], [0, -1e39],
            [0, 0], [0, -0.0], [-0.0, 1], [0, 0.5, 0.5], [0, 0.1, 0.1 + 1e-12], [], [0] + [1] * 4096,
            list(range(4097)), [0.5, 0], ["a"], None, [0, True], [0, 1e-46], [0, 1e-45],
            [0, 3.4028235e38], [0] + [float(i) for i in range(1, 4096)]]))
    elif kind == "model":
        header["model"] = draw(st.sampled_from([{}, {"name": 1}, [], "fuzz", None,
                                                {"name": "lenet-300-100"}, {"name": "x", "aliases": 1}]))
    elif kind == "top":
        how = draw(st.sampled_from(["extra", "missing", "list", "number"]))
        if how == "extra":
            header["extra"] = 1
        elif how == "missing":
            header.pop(draw(st.sampled_from(["model", "codebook", "tensors"])))
        else:
            return how, ([header] if how == "list" else 3)
    elif kind == "tensors":
        how = draw(st.sampled_from(["empty", "not a list", "repeat", "drop", "swap"]))
        if how == "empty":
            header["tensors"], parts[:] = [], []
        elif how == "not a list":
            header["tensors"] = {"0": header["tensors"]}
        elif how == "repeat" and every:
            header["tensors"].append(dict(header["tensors"][0]))
            parts.append(parts[0])
        elif how == "drop" and every:
            header["tensors"].pop()          # the payload stays: sizes no longer add up
        elif how == "swap" and len(every) > 1:
            header["tensors"][0], header["tensors"][1] = header["tensors"][1], header["tensors"][0]
    elif kind == "payload_size":
        how = draw(st.sampled_from(["cut", "extend"]))
        if parts and how == "cut" and parts[-1]:
            parts[-1] = parts[-1][:-1]
        elif parts:
            parts[-1] = parts[-1] + b"\0"
    return kind, header


TEXT_EDITS = ["none"] * 30 + ["huge int", "deep model", "duplicate key", "nan literal", "bad utf-8",
                              "1e999"]


@st.composite
def hostile_files(draw):
    """(file bytes, names of the edits made): a valid base model, one to three hostile edits."""
    header, parts = base_model(draw(st.integers(0, 2 ** 32 - 1)))
    names = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        if not isinstance(header, dict) or not isinstance(header.get("tensors"), list) or not all(
                isinstance(h, dict) for h in header["tensors"]):
            break
        try:
            kind, header = draw(edits(header, parts))
        except (KeyError, TypeError, IndexError, ValueError):   # an earlier edit broke the layout
            kind = "compound"
        names.append(kind)
    text = json.dumps(header, separators=(",", ":")).encode()
    how = draw(st.sampled_from(TEXT_EDITS))
    if how == "huge int":
        text = text.replace(b'"shape":[', b'"shape":[' + b"9" * 5000 + b",", 1)
    elif how == "deep model":
        text = text.replace(b'"model":', b'"model":' + b"[" * 5000 + b"]" * 5000 + b",\"m\":", 1) \
            if text.startswith(b'{"model":') else b"[" * 100000
    elif how == "duplicate key":
        text = text.replace(b'"shape":', b'"shape":[],"shape":', 1)
    elif how == "nan literal":
        text = text.replace(b'"codebook":[0', b'"codebook":[NaN', 1)
    elif how == "bad utf-8":
        text = text.replace(b'"name":"', b'"name":"\xff\xfe', 1)
    elif how == "1e999":
        text = text.replace(b'"codebook":[0,', b'"codebook":[0,1e999,', 1)
    if how != "none":
        names.append(how)
    version = draw(st.sampled_from([2, 2, 2, 1]))
    return build(None, b"".join(parts), version, text=text), names


# --- judging one file --------------------------------------------------------------------

def _declared_values(data: bytes) -> int:
    try:
        header, _, _ = ff.read_header(data)
    except ff.FormatError:
        return 0
    return sum(math.prod(h["shape"]) for h in header["tensors"])


def judge(data: bytes) -> dict:
    """Decode and take statistics of one file, timed and memory-traced.

    Returns ``{"decode": outcome, "inspect": outcome, "seconds", "peak_bytes"}``, an outcome
    being ``"ok"`` or the name of the ``FormatError`` subclass raised.  Anything else that
    is raised, a decoded tensor that disagrees with its header, or a bound broken fails.
    """
    result = {}
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        d = ff.decode(data)
    except ff.FormatError as e:
        result["decode"] = type(e).__name__
        d = None
    else:
        result["decode"] = "ok"
    try:
        file_stats(data)
    except ff.FormatError as e:
        result["inspect"] = type(e).__name__
    else:
        result["inspect"] = "ok"
    result["seconds"] = time.perf_counter() - t0
    result["peak_bytes"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    values = 0
    if d is not None:
        cb_bits = set(d.codebook.view(np.uint32).tolist())
        for h in d.header["tensors"]:
            t = d.tensors[h["name"]]
            assert list(t.shape) == h["shape"]
            values += t.numel()
            if h["coding"] != "raw":
                assert t.dtype == torch.float32
                assert set(np.unique(t.numpy().view(np.uint32)).tolist()) <= cb_bits
        assert values <= ff.DEFAULT_MAX_ELEMENTS
    if result["decode"] == "ok":   # what decodes must have passed the same checks for inspect
        assert result["inspect"] == "ok", result
    assert result["seconds"] < MAX_SECONDS, result
    assert result["peak_bytes"] < BASE_MEMORY + 4 * max(values, _declared_values(data)
                                                        if result["decode"] == "ok" else 0), result
    return result


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(hostile_files())
def test_hostile_files_get_a_named_error_in_bounded_time_and_memory(case):
    data, _ = case
    judge(data)


# --- the hostile headers by name: each gets its error -----------------------------------

def _tiny():
    w = np.array([[0, -0.5, 0, 0, 0, 0.25], [0, 0, 0, 0, 0, 0], [1.0, 0, 0, -0.5, 0, 0]], np.float32)
    return split(ff.encode({"w": torch.from_numpy(w), "b": torch.tensor([0.1, 0.2])},
                           np.array([0.0, -0.5, 0.25, 1.0], np.float32), ["w"], {"name": "tiny"},
                           version=2))


def _edit(change):
    header, parts = _tiny()
    change(header, parts)
    return build(header, b"".join(parts))


def _set(path, value):
    def change(header, parts):
        obj = header
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return change


def _fields(**values):
    """Set named sparse fields of tensor 0 and resize its payload so that sizes add up (the
    check under test is then the one that fires)."""
    def change(header, parts):
        v = header["tensors"][0]["sparse"]
        for k, x in values.items():
            v[ff.SPARSE_FIELDS.index(k)] = x
        size = sparsecode.payload_size(dict(zip(ff.SPARSE_FIELDS, v)))
        parts[0] = parts[0][:size].ljust(size, b"\0")
    return change


def _table(nibble_byte):
    """Tensor 0's index table (4 symbols, bytes 1 and 2) rewritten with ``nibble_byte``."""
    def change(header, parts):
        p = bytearray(parts[0])
        p[1] = p[2] = nibble_byte
        parts[0] = bytes(p)
    return change


def _fillers_bomb(header, parts):
    """8000 fillers of 4096 zeros each, one bit a code: 2^31 values in 4 kB."""
    h, stream = header["tensors"][0], b"\xff" * 1000
    gl = [0] * 4096
    gl[0] = gl[4095] = 1
    h["shape"], h["sparse"] = [2 ** 16, 2 ** 15], [12, 8000, 4096, 2, 8000, 8000]
    parts[0] = huffman.pack_lengths(gl) + huffman.pack_lengths([1, 1]) + stream + stream


NAMED = {
    "shape of 2^31 values, no entries (a bomb)": (_set(("tensors", 0, "shape"), [2 ** 16, 2 ** 15]),
                                                   ff.ElementLimitError),
    "2^31 values addressed by fillers": (_fillers_bomb, ff.ElementLimitError),
    "shape past 2^31": (_set(("tensors", 0, "shape"), [2 ** 16, 2 ** 16]), ff.MalformedHeaderError),
    "negative shape": (_set(("tensors", 0, "shape"), [3, -6]), ff.MalformedHeaderError),
    "nine dimensions": (_set(("tensors", 1, "shape"), [1] * 9), ff.MalformedHeaderError),
    "entries past the values": (_fields(entries=19), ff.InconsistentPayloadError),
    "entries past the stream bits": (_fields(entries=10), ff.InconsistentPayloadError),
    "more stream bits than 15 per entry": (_fields(entries=1, index_stream_bits=16),
                                           ff.InconsistentPayloadError),
    "a stream of a million bits for 9 entries": (_fields(gap_stream_bits=10 ** 6),
                                                 ff.InconsistentPayloadError),
    "stream bits without entries": (_fields(entries=0), ff.InconsistentPayloadError),
    "entries with an empty table": (_fields(gap_symbols=0), ff.InconsistentPayloadError),
    "entries that do not fill the stream": (_fields(entries=8), ff.InconsistentPayloadError),
    "code table not a prefix code": (_table(0x11), ff.InconsistentPayloadError),
    "over-long codes (incomplete)": (_table(0xFF), ff.InconsistentPayloadError),
    "gap width 0": (_set(("tensors", 0, "sparse", 0), 0), ff.MalformedHeaderError),
    "gap width 13": (_set(("tensors", 0, "sparse", 0), 13), ff.MalformedHeaderError),
    "gap table of 4097 symbols at width 12": (_fields(gap_bits=12, gap_symbols=4097),
                                              ff.MalformedHeaderError),
    "gap table wider than its width": (_set(("tensors", 0, "sparse", 2), 2 ** 12 + 1),
                                       ff.MalformedHeaderError),
    "duplicate names": (_set(("tensors", 1, "name"), "w"), ff.MalformedHeaderError),
    "missing name": (lambda h, p: h["tensors"][1].pop("name"), ff.MalformedHeaderError),
    "codebook NaN": (_set(("codebook", 1), float("nan")), ff.MalformedHeaderError),
    "codebook infinity": (_set(("codebook", 1), float("inf")), ff.MalformedHeaderError),
    "codebook past float32": (_set(("codebook", 1), 1e39), ff.MalformedHeaderError),
    "codebook with two zeros": (_set(("codebook", 1), 0), ff.MalformedHeaderError),
    "codebook with a negative zero": (_set(("codebook", 1), -0.0), ff.MalformedHeaderError),
    "codebook with a repeated value": (_set(("codebook", 2), -0.5), ff.MalformedHeaderError),
    "too many tensors": (lambda h, p: h["tensors"].extend(
        {"name": f"z{i}", "shape": [0], "raw": "float32"} for i in range(ff.MIN_MAX_TENSORS)),
        ff.ElementLimitError),
}


@pytest.mark.parametrize("case", list(NAMED))
def test_each_hostile_header_gets_its_named_error(case):
    change, error = NAMED[case]
    data = _edit(change)
    with pytest.raises(error):
        ff.decode(data)
    result = judge(data)
    assert result["decode"] == error.__name__


def test_gap_widths_at_the_limits_are_read():
    """Width 12 with its full 4096-symbol table is legal, and so is width 1."""
    for gap_bits in (1, 12):
        rng = np.random.default_rng(gap_bits)
        idx = np.where(rng.random(20000) < 0.3, rng.integers(1, 4, 20000), 0)
        idx[:5000] = 0
        t = torch.from_numpy(np.array([0, -0.5, 0.25, 1.0], np.float32)[idx])
        code = sparsecode.encode_layer(idx, 4, gap_bits=gap_bits)
        data = ff.encode({"w": t}, [0, -0.5, 0.25, 1.0], ["w"], {"name": "x"}, version=2)
        header, parts = split(data)
        header["tensors"][0]["sparse"] = [code.header()[k] for k in ff.SPARSE_FIELDS]
        d = ff.decode(build(header, code.payload()))
        assert torch.equal(d.tensors["w"], t)


def test_huge_integer_in_the_header_is_malformed():
    header, parts = _tiny()
    text = json.dumps(header).replace('"shape": [', '"shape": [' + "9" * 5000 + ",", 1).encode()
    with pytest.raises(ff.MalformedHeaderError):
        ff.decode(build(None, b"".join(parts), text=text))


def test_the_element_limit_can_be_raised_and_lowered(monkeypatch, tmp_path):
    data = _edit(_set(("tensors", 0, "shape"), [2 ** 13, 2 ** 13]))     # 2^26 zeros, 2 bytes of streams
    with pytest.raises(ff.ElementLimitError, match="SWS_MAX_ELEMENTS"):
        ff.decode(data)
    d = ff.decode(data, max_elements=2 ** 27)
    assert d.tensors["w"].shape == (2 ** 13, 2 ** 13) and int(d.tensors["w"].ne(0).sum()) == 4
    del d
    monkeypatch.setenv(ff.MAX_ELEMENTS_ENV, str(2 ** 27))
    (tmp_path / "f.sws").write_bytes(data)
    assert ff.read(tmp_path / "f.sws").tensors["w"].shape == (2 ** 13, 2 ** 13)
    monkeypatch.setenv(ff.MAX_ELEMENTS_ENV, "10")
    with pytest.raises(ff.ElementLimitError, match="f.sws: file declares"):
        ff.read(tmp_path / "f.sws")
    with pytest.raises(ff.ElementLimitError):
        ff.decode(_tiny_bytes())
    assert ff.decode(_tiny_bytes(), max_elements=20).tensors["b"].shape == (2,)  # the argument wins
    monkeypatch.setenv(ff.MAX_ELEMENTS_ENV, "lots")
    with pytest.raises(ff.ConfigError, match="SWS_MAX_ELEMENTS"):
        ff.decode(_tiny_bytes())
    with pytest.raises(ff.ConfigError):
        ff.decode(_tiny_bytes(), max_elements=-1)


def _tiny_bytes():
    header, parts = _tiny()
    return build(header, b"".join(parts))


def test_inspect_of_a_bomb_is_bounded_by_the_file():
    """Statistics come from the entries: 2^31 declared values cost nothing to inspect."""
    data = _edit(_fillers_bomb)
    tracemalloc.start()
    t0 = time.perf_counter()
    s = file_stats(data)
    seconds, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert s["layers"][0]["size"] == 2 ** 31 and s["layers"][0]["nonzero"] == 8000
    assert seconds < 1 and peak < 16 << 20


def test_decoded_streams_take_memory_proportional_to_their_symbols():
    rng = np.random.default_rng(0)
    ln = np.array([1, 2, 3, 3])
    sym = rng.choice(4, size=1_000_000, p=[0.5, 0.25, 0.125, 0.125])
    data, nbits = huffman.encode(sym, ln)
    tracemalloc.start()
    got = huffman.decode(data, nbits, ln, sym.size)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(got, sym)
    assert peak < sym.size * got.itemsize + (8 << 20)      # the output and a few blocks


def test_sparse_layers_decode_the_same_by_both_paths():
    """The plain-Python path for a few entries and the block path agree on every layer."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 3000))
        idx = np.where(rng.random(n) < rng.choice([0.01, 0.1, 0.9]), rng.integers(1, 9, n), 0)
        code = sparsecode.encode_layer(idx, 9)
        h, payload = code.header(), code.payload()
        pos, got = sparsecode.decode_layer(payload, h, n, 9)
        assert pos.tolist() == np.flatnonzero(idx).tolist() and got.tolist() == idx[idx != 0].tolist()
        if h["entries"] <= huffman._SMALL:
            a = (h["gap_symbols"] + 1) // 2
            b = a + (h["index_symbols"] + 1) // 2
            c = b + (h["gap_stream_bits"] + 7) // 8
            gl = huffman.unpack_lengths(payload[:a], h["gap_symbols"])
            blocks = huffman._SMALL
            try:
                huffman._SMALL = 0         # force the block path
                gaps = huffman.decode(payload[b:c], h["gap_stream_bits"], gl, h["entries"])
            finally:
                huffman._SMALL = blocks
            assert gaps.tolist() == huffman._decode_short(payload[b:c], h["gap_stream_bits"],
                                                          gl.tolist(), h["entries"])

"""Adversarial version 3 files: a valid checksum and preamble around a hostile binary header or
stream.  Huge and inconsistent counts (entries, live rows and columns, stream bytes), shapes
past the limits, codebooks with NaN or two zeros, repeated names, unknown kinds, varints that
never end, streams of garbage, bombs that declare billions of values: each must decode to sane
tensors or raise a named ``FormatError`` subclass in bounded time and memory (``judge`` of
``tests/test_fuzz_format.py``), with the C coder and with the Python one.
"""

from __future__ import annotations

import math
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sws.format import binheader, rangecoder
from sws.format import container as ff
from test_format_v3 import PATHS, coder
from test_fuzz_format import judge

FUZZ_EXAMPLES = int(os.environ.get("SWS_FUZZ_EXAMPLES", "300"))


def build(model, cb, records, parts, header: bytes | None = None) -> bytes:
    """A version 3 file with a valid checksum around these records (or the header bytes)."""
    hb = binheader.encode(model, np.asarray(cb, np.float32), records) if header is None else header
    payload = b"".join(parts)
    body = struct.pack("<8sI", ff.MAGIC, 3) + binheader.varint(len(hb)) + binheader.varint(len(payload)) \
        + hb + payload
    return body + struct.pack("<I", zlib.crc32(body))


def split(data: bytes):
    """(model, codebook, records, per-tensor payloads) of a valid version 3 file."""
    header, cb, payload = ff.read_header(data)
    parts, offset = [], 0
    for h in header["tensors"]:
        size = ff._payload_size(h)
        parts.append(bytes(payload[offset:offset + size]))
        offset += size
    return header["model"], cb, header["tensors"], parts


def base_model(seed: int):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 40))
    cb = np.unique(np.float32(rng.choice([-1, 1], k) * rng.uniform(1e-3, 2, k)))
    cb = np.concatenate([[0.0], cb[cb != 0]]).astype(np.float32)
    tensors, quantized = {}, []
    for i in range(int(rng.integers(1, 5))):
        shape = tuple(int(d) for d in rng.integers(0, 9, int(rng.integers(0, 4))))
        n = math.prod(shape)
        if rng.random() < 0.7:
            idx = np.where(rng.random(n) < rng.choice([0.0, 0.02, 0.3, 1.0]), rng.integers(1, len(cb), n), 0)
            tensors[f"{i}.weight"] = torch.from_numpy(cb[idx].reshape(shape))
            quantized.append(f"{i}.weight")
        else:
            dtype = [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32][int(rng.integers(5))]
            tensors[f"{i}.bias"] = (torch.randn(shape) * 10).to(dtype)
    return split(ff.encode(tensors, cb, quantized, {"name": "fuzz"}))


COUNTS = [0, 1, 2, 3, 7, 8, 255, 2 ** 16, 2 ** 31 - 1, 2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64 - 1]
SHAPES = [[2 ** 31], [2 ** 16, 2 ** 15], [2 ** 31 - 1], [2 ** 25], [2 ** 25 + 1], [2 ** 13, 2 ** 12], [2 ** 40],
          [2 ** 64 - 1], [], [0], [1] * 8, [2] * 8, [2 ** 16, 2 ** 16], [0, 2 ** 40]]
CODEBOOKS = [[0, float("nan")], [0, float("inf")], [0, 0], [0, -0.0], [0, 0.5, 0.5], [0], [0, 1e-45],
             [0, 3.4028235e38], [0] + [float(i) for i in range(1, 4096)]]


@st.composite
def hostile_files(draw):
    model, cb, records, parts = base_model(draw(st.integers(0, 2 ** 32 - 1)))
    records = [dict(h) for h in records]
    names = []
    for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
        sparse = [i for i, h in enumerate(records) if h["coding"] != "raw" and i < len(parts)]
        kind = draw(st.sampled_from(["shape", "bomb", "codebook", "name", "tensors", "payload", "header_byte",
                                     "header_cut", "kind_byte"] + ["field", "stream", "garbage"] * 3 * bool(sparse)))
        names.append(kind)
        if kind == "shape" and records:
            records[draw(st.sampled_from(range(len(records))))]["shape"] = draw(st.sampled_from(SHAPES))
        elif kind == "bomb":
            size = draw(st.sampled_from([2 ** 31, 2 ** 26, 2 ** 25, 2 ** 24]))
            for i in sparse or range(len(records)):
                records[i]["shape"] = [size // 1024, 1024]
        elif kind == "codebook":
            cb = draw(st.sampled_from(CODEBOOKS))
        elif kind == "name" and len(records) > 1:
            records[1]["name"] = records[0]["name"]
        elif kind == "tensors":
            how = draw(st.sampled_from(["drop", "repeat", "empty"]))
            if how == "drop" and records:
                records.pop()
            elif how == "repeat" and records:
                records.append(dict(records[0], name="again"))
                parts.append(parts[0])
            else:
                records, parts = [], []
        elif kind == "payload" and parts:
            parts[-1] = parts[-1][:-1] if parts[-1] and draw(st.booleans()) else parts[-1] + b"\0"
        elif kind == "field":
            i = draw(st.sampled_from(sparse))
            key = draw(st.sampled_from(["entries", "live_rows", "live_cols", "stream_bytes"]))
            v = records[i][key]
            records[i][key] = draw(st.sampled_from(COUNTS + [v + 1, max(v - 1, 0), 2 * v]))
            if key == "stream_bytes" and draw(st.booleans()):   # payload resized to match
                parts[i] = parts[i][:records[i][key]].ljust(min(records[i][key], 1 << 16), b"\0")
        elif kind == "stream":
            i = draw(st.sampled_from(sparse))
            p = bytearray(parts[i])
            for _ in range(draw(st.integers(1, 6))):
                if p:
                    p[draw(st.integers(0, len(p) - 1))] = draw(st.integers(0, 255))
            parts[i] = bytes(p)
        elif kind == "garbage":
            i = draw(st.sampled_from(sparse))
            n = draw(st.sampled_from([1, 4, 16, 300]))
            parts[i] = draw(st.binary(min_size=n, max_size=n))
            records[i]["stream_bytes"] = n
            if records[i]["entries"] == 0:
                records[i].update(entries=draw(st.sampled_from([1, 4 * n])), live_rows=1, live_cols=1)
    try:
        hb = binheader.encode(model, np.asarray(cb, np.float32), records)
    except (ValueError, OverflowError):
        hb = b""
    hb = bytearray(hb)
    if "header_byte" in names and hb:
        hb[draw(st.integers(0, len(hb) - 1))] = draw(st.integers(0, 255))
    if "header_cut" in names and hb:
        del hb[draw(st.integers(0, len(hb) - 1)):]
    if "kind_byte" in names and hb:
        hb += bytes([draw(st.integers(0, 255))]) * draw(st.integers(1, 12))   # trailing bytes / varints
    return build(None, None, None, parts, header=bytes(hb)), names


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(hostile_files())
def test_hostile_v3_files_get_a_named_error_in_bounded_time_and_memory(case):
    judge(case[0])


@settings(max_examples=max(20, FUZZ_EXAMPLES // 5), deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(hostile_files())
def test_hostile_v3_files_with_the_python_coder(case):
    saved = rangecoder._lib
    rangecoder._lib = None
    try:
        judge(case[0])
    finally:
        rangecoder._lib = saved


# --- named hostile files ------------------------------------------------------------------

def _tiny():
    w = np.array([[0, -0.5, 0, 0, 0, 0.25], [0, 0, 0, 0, 0, 0], [1.0, 0, 0, -0.5, 0, 0]], np.float32)
    return split(ff.encode({"w": torch.from_numpy(w), "b": torch.tensor([0.1, 0.2])},
                           np.array([0.0, -0.5, 0.25, 1.0], np.float32), ["w"], {"name": "tiny"}))


def _edit(**fields):
    model, cb, records, parts = _tiny()
    shape = fields.pop("shape", None)
    if shape is not None:
        records[0]["shape"] = shape
    records[0].update(fields)
    if "stream_bytes" in fields:
        parts[0] = parts[0][:fields["stream_bytes"]].ljust(fields["stream_bytes"], b"\0")
    return build(model, cb, records, parts)


def _fields_only(**fields):
    """Tensor 0's fields changed, its payload not: the sizes no longer add up."""
    model, cb, records, parts = _tiny()
    records[0].update(fields)
    return build(model, cb, records, parts)


def _raw_header(mutate):
    model, cb, records, parts = _tiny()
    return build(None, None, None, parts, header=mutate(binheader.encode(model, cb, records)))


def _stream(data: bytes):
    model, cb, records, parts = _tiny()
    records[0]["stream_bytes"] = len(data)
    return build(model, cb, records, [data, parts[1]])


NAMED = {
    "2^31 zeros declared (a bomb)": (lambda: _edit(shape=[2 ** 16, 2 ** 15]), ff.ElementLimitError),
    "shape past 2^31": (lambda: _edit(shape=[2 ** 16, 2 ** 16]), ff.MalformedHeaderError),
    "entries past the values": (lambda: _edit(entries=19), ff.InconsistentPayloadError),
    "entries past the live submatrix": (lambda: _edit(entries=7, live_rows=2, live_cols=3),
                                        ff.InconsistentPayloadError),
    "more live rows than rows": (lambda: _edit(live_rows=4), ff.InconsistentPayloadError),
    "live columns without entries": (lambda: _edit(entries=1, live_cols=2, live_rows=1),
                                     ff.InconsistentPayloadError),
    "a million entries in a few bytes": (lambda: _edit(shape=[1000, 1000], entries=10 ** 6, live_rows=1000,
                                                       live_cols=1000), ff.InconsistentPayloadError),
    "stream bytes past the payload": (lambda: _fields_only(stream_bytes=10 ** 6), ff.InconsistentPayloadError),
    "stream of zero bytes for entries": (lambda: _edit(stream_bytes=0), ff.InconsistentPayloadError),
    "garbage stream": (lambda: _stream(b"\xff" * 8), ff.InconsistentPayloadError),
    "stream with bytes it does not use": (lambda: _stream(_tiny()[3][0] + b"\0" * 8 + b"\x01"),
                                          ff.InconsistentPayloadError),
    "unknown kind byte": (lambda: _raw_header(lambda hb: hb.replace(b"\x01w\x25", b"\x01w\x26")),
                          ff.MalformedHeaderError),
    "nine dimensions": (lambda: _raw_header(lambda hb: hb.replace(b"\x01w\x25", b"\x01w\x95")),
                        ff.MalformedHeaderError),
    "varint not shortest": (lambda: _raw_header(lambda hb: hb.replace(b"\x01w\x25\x03", b"\x01w\x25\x83\x00")),
                            ff.MalformedHeaderError),
    "varint that never ends": (lambda: _raw_header(lambda hb: hb + b"\xff" * 11), ff.MalformedHeaderError),
    "bytes after the last tensor": (lambda: _raw_header(lambda hb: hb + b"\0"), ff.MalformedHeaderError),
    "header cut short": (lambda: _raw_header(lambda hb: hb[:-3]), ff.MalformedHeaderError),
    "model not an object": (lambda: _raw_header(lambda hb: b"\x05\x01x" + hb[hb.index(b"tiny") + 4:]),
                            ff.MalformedHeaderError),
    "unknown value tag": (lambda: _raw_header(lambda hb: b"\x09" + hb[1:]), ff.MalformedHeaderError),
    "codebook with NaN": (lambda: _raw_header(lambda hb: hb.replace(struct.pack("<f", -0.5),
                                                                    struct.pack("<f", float("nan")))),
                          ff.MalformedHeaderError),
    "codebook with a negative zero": (lambda: _raw_header(lambda hb: hb.replace(struct.pack("<f", -0.5),
                                                                                struct.pack("<f", -0.0))),
                                      ff.MalformedHeaderError),
    "repeated name": (lambda: _raw_header(lambda hb: hb.replace(b"\x01b", b"\x01w")), ff.MalformedHeaderError),
    "too many tensors": (lambda: _raw_header(lambda hb: hb.replace(b"\x02\x01w", binheader.varint(10 ** 6) + b"\x01w")),
                         ff.ElementLimitError),
    "header length past 1 MiB": (lambda: struct.pack("<8sI", ff.MAGIC, 3) + binheader.varint(2 ** 21) + b"\0" * 30,
                                 ff.HeaderTooLargeError),
    "preamble cut inside a varint": (lambda: struct.pack("<8sI", ff.MAGIC, 3) + b"\x80", ff.TruncatedFileError),
    "preamble varint not shortest": (lambda: struct.pack("<8sI", ff.MAGIC, 3) + b"\x80\x00\x00" + b"\0" * 8,
                                     ff.MalformedHeaderError),
}


@pytest.mark.parametrize("use_c", PATHS)
@pytest.mark.parametrize("case", list(NAMED))
def test_each_hostile_v3_file_gets_its_named_error(case, use_c):
    make, error = NAMED[case]
    data = make()
    with coder(use_c):
        with pytest.raises(error):
            ff.decode(data)
        assert judge(data)["decode"] == error.__name__


def test_named_files_are_the_tiny_file_but_for_their_edit():
    model, cb, records, parts = _tiny()
    data = build(model, cb, records, parts)
    assert data == ff.encode({"w": ff.decode(data).tensors["w"], "b": torch.tensor([0.1, 0.2])}, cb, ["w"],
                             {"name": "tiny"})
    assert b"\x01w\x25\x03" in data        # name "w", kind: sparse, 2 dimensions, 3 rows


def test_the_element_limit_applies_to_v3():
    data = _edit(shape=[2 ** 13, 2 ** 13])     # 2^26 values, the same 4 entries
    with pytest.raises(ff.ElementLimitError):
        ff.decode(data)
    d = ff.decode(data, max_elements=2 ** 27)
    assert int(d.tensors["w"].ne(0).sum()) == 4

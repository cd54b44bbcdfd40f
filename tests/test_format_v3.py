"""Format version 3: golden bytes, the binary header, live submatrices, the range coder in C and
in Python (the same bytes), bit-exact round trips at the edges."""

import contextlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sws.format import binheader, livecode, rangecoder
from sws.format import container as ff
from sws.format.stats import file_stats, format_stats

GOLDEN_V3 = Path(__file__).parent / "golden" / "tiny-v3.sws"
GOLDEN_V3_CONV = Path(__file__).parent / "golden" / "conv-v3.sws"
CODEBOOK = np.array([0.0, -0.5, 0.25, 1.0], dtype=np.float32)
PATHS = [pytest.param(True, id="C"), pytest.param(False, id="python")]


@contextlib.contextmanager
def coder(use_c: bool):
    """The container with the C coder (skipped where it is not built) or the Python one."""
    if use_c and not rangecoder.c_available():
        pytest.skip("the C coder is not built")
    saved = rangecoder._lib
    if not use_c:
        rangecoder._lib = None
    try:
        yield
    finally:
        rangecoder._lib = saved


def tiny_model():
    w1 = CODEBOOK[np.array([[0, 1, 0, 0, 0, 2], [0, 0, 0, 0, 0, 0], [3, 0, 0, 1, 0, 0]])]
    w2 = CODEBOOK[np.array([[0, 0, 2], [1, 1, 0]])]
    return {"0.mean": torch.tensor(0.1307), "1.weight": torch.from_numpy(w1),
            "1.bias": torch.tensor([0.1, -0.2, 0.3]), "2.weight": torch.from_numpy(w2)}


def conv_model():
    """A conv kernel with a dead output and a dead input, a sparse bias, raw int and float16."""
    rng = np.random.default_rng(3)
    idx = np.where(rng.random((6, 3, 3, 3)) < 0.4, rng.integers(1, 4, (6, 3, 3, 3)), 0)
    idx[2] = 0
    idx[:, 1] = 0
    return {"c.weight": torch.from_numpy(CODEBOOK[idx]), "c.bias": torch.tensor([0.0, 0.25, 0, 0, 1.0, 0]),
            "steps": torch.tensor([7, -3], dtype=torch.int64), "h": torch.tensor([0.5, -2.0], dtype=torch.float16)}


MODEL = {"name": "tiny", "input_norm": "none"}
CONV_MODEL = {"name": "user:Conv", "class": "x.Conv", "aliases": {"d.weight": "c.weight"},
              "extra": [1, -2, 2.5, None, True, False, {"k": "v"}]}


@pytest.mark.parametrize("use_c", PATHS)
def test_golden_v3_bytes_and_tensors(use_c):
    with coder(use_c):
        data = ff.encode(tiny_model(), CODEBOOK, ["1.weight", "2.weight"], MODEL)
        conv = ff.encode(conv_model(), CODEBOOK, ["c.weight", "c.bias"], CONV_MODEL)
    if os.environ.get("SWS_REGEN_GOLDEN") and use_c:
        GOLDEN_V3.write_bytes(data)
        GOLDEN_V3_CONV.write_bytes(conv)
    assert data == GOLDEN_V3.read_bytes() and conv == GOLDEN_V3_CONV.read_bytes()
    with coder(use_c):
        for golden, model, info in ((GOLDEN_V3, tiny_model(), MODEL), (GOLDEN_V3_CONV, conv_model(), CONV_MODEL)):
            d = ff.decode(golden.read_bytes())
            assert d.header["model"] == info
            assert list(d.tensors) == list(model)
            for k, v in model.items():
                assert d.tensors[k].dtype == v.dtype and d.tensors[k].shape == v.shape
                assert d.tensors[k].numpy().tobytes() == v.numpy().tobytes(), k


def test_golden_v3_layout():
    data = GOLDEN_V3.read_bytes()
    magic, version = struct.unpack_from("<8sI", data)
    assert magic == b"\x89SWS\r\n\x1a\n" and version == 3
    r = binheader.Reader(data, at=12)
    hlen, plen = r.varint(), r.varint()
    assert len(data) == r.at + hlen + plen + 4
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    header, cb = binheader.parse(data[r.at:r.at + hlen], 2048, "")
    assert header["model"] == MODEL and cb.tolist() == CODEBOOK.tolist()
    h = header["tensors"][1]
    assert (h["name"], h["shape"], h["coding"], h["entries"], h["live_rows"], h["live_cols"]) == \
        ("1.weight", [3, 6], "sparse-range", 4, 2, 4)
    v2 = ff.encode(tiny_model(), CODEBOOK, ["1.weight", "2.weight"], MODEL, version=2)
    assert len(data) < len(v2)


def test_the_three_versions_decode_alike():
    golden = Path(__file__).parent / "golden"
    a, b, c = (ff.decode((golden / f).read_bytes()) for f in ("tiny-v1.sws", "tiny.sws", "tiny-v3.sws"))
    assert a.header["model"] == b.header["model"] == c.header["model"]
    for k in a.tensors:
        assert torch.equal(a.tensors[k], c.tensors[k]) and torch.equal(b.tensors[k], c.tensors[k])


# --- the coder: C and Python give the same bytes ----------------------------------------------

def _random_stream(rng):
    k = int(rng.choice([2, 3, 14, 17, 300, 4096]))
    R, C = int(rng.integers(1, 60)), int(rng.integers(1, 80))
    m = rng.random((R, C)) < rng.choice([0.005, 0.1, 0.5, 1.0])
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    sub = m[np.ix_(rows, cols)]
    pos = np.flatnonzero(sub)
    return rows, cols, pos, rng.integers(1, k, pos.size), R, C, sub.size, k


def test_c_and_python_coders_agree():
    if not rangecoder.c_available():
        pytest.skip("the C coder is not built")
    rng = np.random.default_rng(0)
    for _ in range(300):
        rows, cols, pos, idx, R, C, area, k = _random_stream(rng)
        a = rangecoder.encode(rows, cols, pos, idx, k, use_c=True)
        assert a == rangecoder.encode(rows, cols, pos, idx, k, use_c=False)
        for use_c in (True, False):
            got = rangecoder.decode(a, rows.size, R, cols.size, C, pos.size, area, k, use_c=use_c)
            for x, y in zip(got, (rows, cols, pos, idx)):
                assert x.tolist() == y.tolist()


@pytest.mark.parametrize("use_c", PATHS)
def test_gaps_up_to_2_31(use_c):
    pos = np.array([0, 2 ** 30, 2 ** 31 - 2, 2 ** 31 - 1])
    with coder(use_c):
        data = rangecoder.encode([], [], pos, [1, 2, 4, 1], 5)
        assert rangecoder.decode(data, 0, 1, 0, 1, 4, 2 ** 31, 5)[2].tolist() == pos.tolist()
        with pytest.raises(rangecoder.CoderError, match="outside its bound"):
            rangecoder.decode(data, 0, 1, 0, 1, 4, 2 ** 31 - 1, 5)
        with pytest.raises(rangecoder.CoderError, match="index outside"):
            rangecoder.decode(data, 0, 1, 0, 1, 4, 2 ** 31, 4)


@pytest.mark.parametrize("use_c", PATHS)
def test_garbage_streams_raise_coder_errors_or_decode_in_bounds(use_c):
    rng = np.random.default_rng(1)
    with coder(use_c):
        for _ in range(300):
            data = rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
            n, area = int(rng.integers(1, 50)), int(rng.integers(50, 10 ** 6))
            try:
                rows, cols, pos, idx = rangecoder.decode(data, 2, 5, 3, 7, n, area, 9)
            except rangecoder.CoderError:
                continue
            assert rows.max() < 5 and cols.max() < 7 and pos.max() < area and 1 <= idx.min() <= idx.max() < 9
            assert (np.diff(pos) > 0).all() and (np.diff(rows) > 0).all()


# --- round trips at the edges, both coders ----------------------------------------------------

def _edge_tensors(rng):
    big = np.zeros(1 << 22, np.float32)
    big[[3, (1 << 21) + 5, (1 << 22) - 1]] = CODEBOOK[1:]
    one = np.zeros((40, 50), np.float32)
    one[17, 23] = 0.25
    return {"empty": torch.zeros(0, 5), "empty1": torch.zeros(0), "zeros": torch.zeros(30, 20),
            "scalar": torch.tensor(1.0), "scalar0": torch.tensor(0.0), "one": torch.from_numpy(one),
            "vec": torch.from_numpy(CODEBOOK[rng.integers(0, 4, 77)]), "biggaps": torch.from_numpy(big),
            "conv": torch.from_numpy(CODEBOOK[np.where(rng.random((8, 4, 3, 3)) < 0.2,
                                                       rng.integers(1, 4, (8, 4, 3, 3)), 0)]),
            "dense": torch.from_numpy(CODEBOOK[rng.integers(1, 4, (9, 11))]),
            "deep": torch.from_numpy(CODEBOOK[rng.integers(0, 4, (2, 1, 3, 1, 2, 1, 1, 2))])}


def _raw_tensors():
    return {f"raw.{d}": (torch.arange(-3, 4) * 7).to(d) for d in
            (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32)} | \
        {"raw.scalar": torch.tensor(-0.0), "raw.empty": torch.zeros(2, 0, dtype=torch.float64),
         "raw.nan": torch.tensor([float("nan"), float("inf"), -1e-45])}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


@pytest.mark.parametrize("use_c", PATHS)
def test_round_trip_at_the_edges(use_c):
    rng = np.random.default_rng(5)
    sparse = _edge_tensors(rng)
    tensors = {**sparse, **_raw_tensors()}
    with coder(use_c):
        data = ff.encode(tensors, CODEBOOK, list(sparse), {"name": "edges"})
        d = ff.decode(data)
        s = file_stats(data)
    assert all(_same(d.tensors[k], v) for k, v in tensors.items())
    rows = {r["name"]: r for r in s["layers"]}
    assert rows["one"]["live"] == [1, 1] and rows["biggaps"]["nonzero"] == 3
    assert rows["vec"]["live"][1] == 77           # a vector's columns count as live
    assert "format version 3" in format_stats(s)


@pytest.mark.parametrize("use_c", PATHS)
@pytest.mark.parametrize("k", [1, 2, 4096])
def test_codebooks_of_1_2_and_4096_entries(use_c, k):
    rng = np.random.default_rng(k)
    cb = np.concatenate([[0.0], np.unique(rng.normal(size=4 * k).astype(np.float32))[:k - 1]]).astype(np.float32)
    cb = cb[cb.view(np.uint32) != 0x80000000]
    assert cb.size == k
    w = cb[rng.integers(0, k, (64, 100))] if k > 1 else np.zeros((64, 100), np.float32)
    t = {"w": torch.from_numpy(w), "z": torch.zeros(3)}
    with coder(use_c):
        d = ff.decode(ff.encode(t, cb, ["w", "z"], {"name": "k"}))
    assert d.codebook.tobytes() == cb.tobytes()
    assert _same(d.tensors["w"], t["w"]) and _same(d.tensors["z"], t["z"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1))
def test_python_coder_writes_the_c_coders_files(seed):
    if not rangecoder.c_available():
        pytest.skip("the C coder is not built")
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in rng.integers(0, 12, int(rng.integers(0, 5))))
    k = int(rng.integers(2, 40))
    cb = np.concatenate([[0.0], np.arange(1, k, dtype=np.float32) / 7]).astype(np.float32)
    idx = np.where(rng.random(shape) < rng.choice([0.0, 0.05, 0.5, 1.0]), rng.integers(1, k, shape), 0)
    t = {"w": torch.from_numpy(np.asarray(cb[idx], dtype=np.float32).reshape(shape))}
    a = ff.encode(t, cb, ["w"], {"name": "x"})
    with coder(False):
        b = ff.encode(t, cb, ["w"], {"name": "x"})
        assert _same(ff.decode(a).tensors["w"], t["w"])
    assert a == b


def test_live_lists_only_when_not_all_live():
    w = np.zeros((5, 6), np.int64)
    w[1, 2] = w[3, 4] = 1
    fields, stream = livecode.encode_tensor(w.reshape(-1), [5, 6], 2)
    assert (fields["live_rows"], fields["live_cols"], fields["entries"]) == (2, 2, 2)
    h = {"shape": [5, 6], **fields}
    pos, idx = livecode.decode_entries(stream, h, 2)
    assert pos.tolist() == [8, 22] and idx.tolist() == [1, 1]
    assert len(stream) >= 1 and livecode.check_fields(h, 2) is None
    assert "stream of" in livecode.check_fields({**h, "entries": 2, "stream_bytes": 0}, 2)


def test_model_description_round_trips_as_json_does():
    info = {"name": "user:M", "class": "a.b.M", "aliases": {"x": "y"}, "n": 2 ** 62, "neg": -(2 ** 63),
            "f": 0.1, "t": (1, 2), "nested": [[[{}]]], "u": "ünï", "none": None, "b": False}
    hb = binheader.encode(info, CODEBOOK, [])
    header, _ = binheader.parse(hb, 10, "")
    assert header["model"] == {**info, "t": [1, 2]}
    with pytest.raises(ValueError):
        binheader.encode({"name": "x", "big": 2 ** 64}, CODEBOOK, [])

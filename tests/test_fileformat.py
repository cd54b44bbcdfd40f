"""The .sws file format: golden bytes, round trips, corrupt files, fuzzing, save/load."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sws
from sws.format import container as ff
from sws.format import sparsecode

GOLDEN = Path(__file__).parent / "golden" / "tiny.sws"          # version 2, as written now
GOLDEN_V1 = Path(__file__).parent / "golden" / "tiny-v1.sws"    # the same model, version 1
CODEBOOK = np.array([0.0, -0.5, 0.25, 1.0], dtype=np.float32)


def tiny_model():
    """A fixed tiny state dict: two quantised matrices, a raw bias and a raw scalar."""
    w1 = CODEBOOK[np.array([[0, 1, 0, 0, 0, 2], [0, 0, 0, 0, 0, 0], [3, 0, 0, 1, 0, 0]])]
    w2 = CODEBOOK[np.array([[0, 0, 2], [1, 1, 0]])]
    return {"0.mean": torch.tensor(0.1307), "1.weight": torch.from_numpy(w1),
            "1.bias": torch.tensor([0.1, -0.2, 0.3]), "2.weight": torch.from_numpy(w2)}


def tiny_bytes(version=2):
    """The tiny model as a version 2 file (what the golden file and the JSON edits below need);
    version 3: tests/test_format_v3.py."""
    return ff.encode(tiny_model(), CODEBOOK, ["1.weight", "2.weight"],
                     {"name": "tiny", "input_norm": "none"}, version=version)


def test_golden_bytes():
    data = tiny_bytes()
    if os.environ.get("SWS_REGEN_GOLDEN"):
        GOLDEN.write_bytes(data)
    assert data == GOLDEN.read_bytes()
    d = ff.decode(data)
    for k, v in tiny_model().items():
        assert torch.equal(d.tensors[k], v) and d.tensors[k].dtype == v.dtype


def test_golden_layout():
    data = GOLDEN.read_bytes()
    magic, version, hlen, plen = struct.unpack_from("<8sIIQ", data)
    assert magic == b"\x89SWS\r\n\x1a\n" and version == 2
    assert len(data) == 24 + hlen + plen + 4
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    text = zlib.decompress(data[24:24 + hlen], -15)   # the header: raw deflate of the JSON
    assert text.startswith(b'{"model":{"name":"tiny"') and len(text) > hlen


def test_version_1_files_still_read_the_same():
    old, new = ff.decode(GOLDEN_V1.read_bytes()), ff.decode(GOLDEN.read_bytes())
    assert struct.unpack_from("<I", GOLDEN_V1.read_bytes(), 8)[0] == 1
    assert old.header == new.header and np.array_equal(old.codebook, new.codebook)
    for k, v in tiny_model().items():
        assert torch.equal(old.tensors[k], v) and torch.equal(new.tensors[k], v)
    # the payloads are the same bytes; only the header is smaller
    (text1, payload1), (text2, payload2) = _parts(GOLDEN_V1.read_bytes()), _parts(GOLDEN.read_bytes())
    assert text1 == text2 and payload1 == payload2
    assert len(GOLDEN.read_bytes()) < len(GOLDEN_V1.read_bytes())


# --- round trips -------------------------------------------------------------

@st.composite
def layers(draw):
    shape = draw(st.lists(st.integers(0, 12), min_size=0, max_size=4))
    n = int(np.prod(shape))
    k = draw(st.integers(2, 64))
    density = draw(st.sampled_from([0.0, 1.0, None]) | st.floats(0, 1))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if density is None:   # a single non-zero
        idx = np.zeros(n, np.int64)
        if n:
            idx[rng.integers(n)] = rng.integers(1, k)
    else:
        idx = np.where(rng.random(n) < density, rng.integers(1, k, n), 0)
    cb = np.concatenate([[0.0], rng.choice([-1, 1], k - 1) * rng.uniform(1e-3, 2, k - 1)])
    cb = np.unique(cb.astype(np.float32))   # distinct after rounding to float32
    cb = np.concatenate([[0.0], cb[cb != 0]]).astype(np.float32)
    idx = np.minimum(idx, len(cb) - 1)
    return cb[idx].reshape(shape), cb


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers(), st.lists(st.floats(-1e6, 1e6, width=32), max_size=5), st.sampled_from([1, 2, 3]))
def test_round_trip_bit_exact(layer, bias, version):
    w, cb = layer
    t = {"w": torch.from_numpy(w), "b": torch.tensor(bias, dtype=torch.float32)}
    d = ff.decode(ff.encode(t, cb, ["w"], {"name": "x"}, version=version))
    assert d.codebook.view(np.uint32).tolist() == cb.view(np.uint32).tolist()
    for k in t:
        assert d.tensors[k].shape == t[k].shape
        assert d.tensors[k].numpy().view(np.uint32).tobytes() == t[k].numpy().view(np.uint32).tobytes()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(0, 300), st.integers(0, 2**32 - 1))
def test_gaps_longer_than_the_largest_code(gap_bits, gap, seed):
    """Fillers split gaps >= 2**gap_bits; positions come back exactly."""
    rng = np.random.default_rng(seed)
    idx = np.zeros(gap + 40, np.int64)
    idx[gap] = 1
    idx[gap + 1 + rng.integers(0, 39)] = 2
    code = sparsecode.encode_layer(idx, 3, gap_bits=gap_bits)
    assert code.entries == 2 + gap // 2 ** gap_bits + (idx[gap + 1:].nonzero()[0][0] >> gap_bits)
    pos, got = sparsecode.decode_layer(code.payload(), code.header(), idx.size, 3)
    assert pos.tolist() == np.flatnonzero(idx).tolist()
    assert got.tolist() == idx[idx != 0].tolist()


@pytest.mark.parametrize("version", [2, 3])
def test_all_zero_layer_has_empty_streams(version):
    t = {"w": torch.zeros(50, 40)}
    data = ff.encode(t, [0.0, 1.0], ["w"], {"name": "x"}, version=version)
    h = ff.decode(data).header["tensors"][0]
    assert h["entries"] == 0 and ff._payload_size(h) == 0
    assert torch.equal(ff.decode(data).tensors["w"], t["w"])


def test_values_off_the_codebook_are_refused():
    with pytest.raises(ValueError, match="not a codebook entry"):
        ff.encode({"w": torch.tensor([0.0, 0.3])}, [0.0, 0.25], ["w"], {"name": "x"})
    with pytest.raises(ValueError, match="entry 0"):
        ff.encode({"w": torch.tensor([0.0])}, [0.5, 0.0], ["w"], {"name": "x"})


# --- bad files ---------------------------------------------------------------

def _rebuild(header: bytes, payload: bytes, version=1, magic=ff.MAGIC, hlen=None, plen=None):
    body = struct.pack("<8sIIQ", magic, version, len(header) if hlen is None else hlen,
                       len(payload) if plen is None else plen) + header + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _parts(data):
    """(header JSON text, payload bytes) of a file of either version."""
    _, version, hlen, plen = struct.unpack_from("<8sIIQ", data)
    header = data[24:24 + hlen]
    return (zlib.decompress(header, -15) if version == 2 else header), data[24 + hlen:24 + hlen + plen]


def _deflate(text: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(text) + packer.flush()


def _with_header(edit):
    import json
    h, p = _parts(tiny_bytes())
    header = json.loads(h)
    edit(header)
    return _rebuild(json.dumps(header).encode(), p)


def _set_shape(h):
    h["tensors"][1]["shape"] = [2, 2]   # entries lie beyond 4 elements


def _set_raw_shape(h):
    h["tensors"][2]["shape"] = [4]      # raw bytes no longer add up


def _bad_entries(h):
    h["tensors"][1]["sparse"][1] += 1    # entries


def _bad_bits(h):
    h["tensors"][1]["sparse"][4] -= 1    # gap stream bits


BAD = {
    "magic": (lambda: b"PK\x03\x04" + tiny_bytes()[4:], ff.BadMagicError),
    "empty": (lambda: b"", ff.BadMagicError),
    "version": (lambda: _rebuild(*_parts(tiny_bytes()), version=4), ff.UnsupportedVersionError),
    "version 0": (lambda: _rebuild(*_parts(tiny_bytes()), version=0), ff.UnsupportedVersionError),
    "v2 header not deflate": (lambda: _rebuild(_parts(tiny_bytes())[0], _parts(tiny_bytes())[1], version=2),
                              ff.MalformedHeaderError),
    "v2 header cut short": (lambda: _rebuild(_deflate(_parts(tiny_bytes())[0])[:-3], _parts(tiny_bytes())[1],
                                             version=2), ff.MalformedHeaderError),
    "v2 bytes after header": (lambda: _rebuild(_deflate(_parts(tiny_bytes())[0]) + b"{}",
                                               _parts(tiny_bytes())[1], version=2), ff.MalformedHeaderError),
    "v2 header inflates past 1 MiB": (lambda: _rebuild(_deflate(b" " * (ff.MAX_HEADER_BYTES + 1)), b"",
                                                       version=2), ff.HeaderTooLargeError),
    "v2 header not json": (lambda: _rebuild(_deflate(b"{nope"), b"", version=2), ff.MalformedHeaderError),
    "header too large": (lambda: _rebuild(b"", b"", hlen=ff.MAX_HEADER_BYTES + 1),
                         ff.HeaderTooLargeError),
    "header not json": (lambda: _rebuild(b"{nope", _parts(tiny_bytes())[1]), ff.MalformedHeaderError),
    "header nested": (lambda: _rebuild(b"[" * 100000, b""), ff.MalformedHeaderError),
    "header schema": (lambda: _with_header(lambda h: h.pop("codebook")), ff.MalformedHeaderError),
    "duplicate key": (lambda: _rebuild(b'{"model":1,"model":2}', b""), ff.MalformedHeaderError),
    "truncated preamble": (lambda: tiny_bytes()[:12], ff.TruncatedFileError),
    "truncated payload": (lambda: tiny_bytes()[:-7], ff.TruncatedFileError),
    "huge declared payload": (lambda: _rebuild(*_parts(tiny_bytes()), plen=2**63), ff.TruncatedFileError),
    "trailing bytes": (lambda: tiny_bytes() + b"\0", ff.TrailingDataError),
    "checksum": (lambda: tiny_bytes()[:-30] + bytes([tiny_bytes()[-30] ^ 1]) + tiny_bytes()[-29:],
                 ff.ChecksumError),
    "shape vs payload": (lambda: _with_header(_set_shape), ff.InconsistentPayloadError),
    "raw shape vs payload": (lambda: _with_header(_set_raw_shape), ff.InconsistentPayloadError),
    "entries vs stream": (lambda: _with_header(_bad_entries), ff.InconsistentPayloadError),
    "stream bits": (lambda: _with_header(_bad_bits), ff.InconsistentPayloadError),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_raises_its_named_error(case):
    make, error = BAD[case]
    with pytest.raises(error) as e:
        ff.decode(make())
    assert isinstance(e.value, sws.SwsError)


def _mutate(data: bytes, ops, fix_crc: bool) -> bytes:
    b = bytearray(data)
    for kind, pos, val in ops:
        pos = pos % (len(b) + 1)
        if kind == 0 and b:
            b[pos % len(b)] = val            # overwrite a byte
        elif kind == 1:
            b[pos:pos] = bytes([val])        # insert
        elif kind == 2:
            del b[pos:pos + 1 + val % 8]     # delete a run
        elif kind == 3 and b:
            b[pos % len(b)] ^= 1 << (val % 8)  # flip a bit
        else:
            del b[pos:]                      # truncate
    if fix_crc and len(b) >= 4:
        b[-4:] = struct.pack("<I", zlib.crc32(bytes(b[:-4])))
    return bytes(b)


FUZZ_EXAMPLES, FUZZ_PER_EXAMPLE = 250, 40   # 10,000 mutated files in all


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2**32 - 1))
def test_fuzz_mutated_files_raise_only_format_errors(seed):
    """40 mutated files per example; half get a valid checksum so the deeper checks run."""
    golden = GOLDEN.read_bytes()
    rng = np.random.default_rng(seed)
    for i in range(FUZZ_PER_EXAMPLE):
        ops = [(int(rng.integers(5)), int(rng.integers(len(golden) + 1)), int(rng.integers(256)))
               for _ in range(int(rng.integers(1, 5)))]
        data = _mutate(golden, ops, fix_crc=bool(i % 2))
        try:
            d = ff.decode(data)
        except ff.FormatError:
            continue
        for t in d.tensors.values():   # a mutation that decodes must give sane tensors
            assert t.dtype in (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32)


# --- save / load ---------------------------------------------------------------

def test_save_load_real_model_bit_exact(tmp_path):
    from sws.zoo.models import build_model
    model = build_model("lenet-300-100", "standardize", seed=0)
    cb = np.array([0.0, -0.05, 0.04, 0.1], np.float32)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(cb[rng.choice(4, size=p.shape, p=[.9, .04, .04, .02])]))
    covered = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    with torch.no_grad():   # biases off the codebook: stored exactly
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape))
    size = sws.save(tmp_path / "m.sws", model, name="lenet-300-100", input_norm="standardize",
                    codebook=cb, quantized=covered)
    assert size == (tmp_path / "m.sws").stat().st_size
    loaded = sws.load(tmp_path / "m.sws")
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert float(loaded[0].mean) == np.float32(0.1307)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_load_refuses_tensors_of_another_model(tmp_path):
    GOLDEN_COPY = tmp_path / "g.sws"
    data = _with_header(lambda h: h["model"].update(name="lenet-300-100"))
    GOLDEN_COPY.write_bytes(data)
    with pytest.raises(ff.InconsistentPayloadError, match="do not match"):
        sws.load(GOLDEN_COPY)


def test_load_missing_file(tmp_path):
    with pytest.raises(ff.FormatError, match="no such file"):
        sws.load(tmp_path / "nope.sws")


# --- CLI -------------------------------------------------------------------------

def _quantized_run(tmp_path):
    """A run folder holding only a quantised LeNet-300-100 (random weights on a codebook)."""
    from sws.zoo.models import build_model
    from sws.runs.rundir import RunDir
    model = build_model("lenet-300-100", "standardize", seed=1)
    cb = np.array([0.0, -0.08, 0.05, 0.12], np.float32)
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(cb[rng.choice(4, size=p.shape, p=[.95, .02, .02, .01])]))
    run = RunDir.create(tmp_path / "run")
    covered = [n for n, _ in model.named_parameters()]
    run.save("quantized", model.state_dict(), {"model": "lenet-300-100", "input_norm": "standardize",
                                               "codebook": cb.tolist(), "covered": covered})
    return run.path, model


def _cli(args, capsys):
    from sws.cli import main
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_compress_and_inspect(tmp_path, capsys):
    run, model = _quantized_run(tmp_path)
    code, out, _ = _cli(["compress", run, "-o", tmp_path / "m.sws"], capsys)
    assert code == 0 and "CR" in out
    loaded = sws.load(tmp_path / "m.sws")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    code, out, _ = _cli(["inspect", tmp_path / "m.sws"], capsys)
    assert code == 0
    assert "2.weight" in out and "paper" in out and "entropy" in out
    size = (tmp_path / "m.sws").stat().st_size
    assert f"{32 * sum(v.numel() for v in model.state_dict().values()) / (8 * size):.1f}" in out


@pytest.mark.parametrize("command", ["inspect", "evaluate"])
@pytest.mark.parametrize("content", [None, b"garbage", "truncated"])
def test_cli_missing_or_corrupt_file_exits_2(tmp_path, capsys, command, content):
    f = tmp_path / "bad.sws"
    if content == "truncated":
        f.write_bytes(GOLDEN.read_bytes()[:100])
    elif content is not None:
        f.write_bytes(content)
    code, out, err = _cli([command, f], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_cli_evaluate_sws_file(tmp_path, capsys, mnist_dir):
    run, _ = _quantized_run(tmp_path)
    _cli(["compress", run, "-o", tmp_path / "m.sws"], capsys)
    code, out, _ = _cli(["evaluate", tmp_path / "m.sws", "--data-dir", mnist_dir], capsys)
    assert code == 0 and out.startswith("m ") and "accuracy" in out


@pytest.mark.slow
def test_sws_run_writes_a_file_that_reproduces_the_post_processed_accuracy(tmp_path, capsys,
                                                                          mnist_dir):
    import json
    run = tmp_path / "run"
    code, out, _ = _cli(["run", "--model", "lenet-300-100", "--out", run, "--data-dir", mnist_dir,
                         "--train-subset", "2000", "--pretrain-epochs", "1", "--epochs", "2",
                         "--no-budget", "--quiet"], capsys)
    assert code == 0 and f"wrote {run / 'model.sws'}" in out
    code, out, _ = _cli(["evaluate", run / "model.sws", "--data-dir", mnist_dir], capsys)
    q = json.loads((run / "metrics.json").read_text())["quantized"]
    assert f"accuracy {q['test_accuracy']:.4f}" in out


def test_save_refuses_a_file_that_does_not_give_the_network_back(tmp_path, monkeypatch):
    """What compress reports is the file's network: save decodes what it is about to write and
    compares every tensor with the network's; a coder that loses a value writes nothing and
    leaves an earlier file in place."""
    from sws.format import container
    model = torch.nn.Linear(6, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([0.0, 0.5, -0.25]).repeat(6, 1).T)
        model.bias.copy_(torch.tensor([0.1, -0.0, 2.0]))
    out = tmp_path / "m.sws"
    out.write_bytes(b"the user's earlier file")
    real = container.decode

    def lossy(data, **kw):                       # a decoder bug: one weight comes back changed
        d = real(data, **kw)
        d.tensors["weight"].view(-1)[4] += 1.0
        return d
    monkeypatch.setattr(container, "decode", lossy)
    with pytest.raises(ff.RoundTripError, match=r"weight.*index 4.*nothing was written"):
        sws.save(out, model, quantized=["weight"])
    assert out.read_bytes() == b"the user's earlier file"
    monkeypatch.setattr(container, "decode", real)
    sws.save(out, model, quantized=["weight"])   # -0.0 in the bias is stored raw: exactly
    got = sws.load(out, torch.nn.Linear(6, 3))
    assert torch.equal(got.weight, model.weight) and torch.equal(got.bias, model.bias)

"""IDX reader, data location and the errors bad data gets."""

import gzip

import numpy as np
import torch
import pytest

from sws.zoo.mnist import load_mnist, read_idx, resolve_data_dir, write_idx
from sws.errors import DataError

NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def make_folder(path, n_train=20, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    path.mkdir(exist_ok=True)
    write_idx(path / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(path / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n_train))
    write_idx(path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(path / f"t10k-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n_test))
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(tmp_path, gz):
    a = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    p = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(p, a)
    assert np.array_equal(read_idx(p, 3), a)
    train, val, test = load_mnist(make_folder(tmp_path / "d", gz=gz), val_size=5)
    assert len(train) == 15 and len(val) == 5 and len(test) == 10
    assert train.x.dtype.is_floating_point and 0 <= train.x.min() and train.x.max() <= 1
    assert train.x.shape[1:] == (1, 28, 28)


def test_missing_file(tmp_path):
    d = make_folder(tmp_path / "d")
    (d / NAMES[1]).unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        load_mnist(d)


def test_truncated_gzip(tmp_path):
    d = make_folder(tmp_path / "d")
    blob = (d / NAMES[0]).read_bytes()
    (d / NAMES[0]).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        load_mnist(d)


def test_wrong_magic(tmp_path):
    d = make_folder(tmp_path / "d")
    raw = bytearray(gzip.decompress((d / NAMES[2]).read_bytes()))
    raw[3] = 0x01
    (d / NAMES[2]).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="wrong magic number"):
        load_mnist(d)


def test_truncated_body(tmp_path):
    d = make_folder(tmp_path / "d")
    raw = gzip.decompress((d / NAMES[0]).read_bytes())
    (d / NAMES[0]).write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_mnist(d)


def test_count_mismatch(tmp_path):
    d = make_folder(tmp_path / "d")
    write_idx(d / NAMES[1], np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        load_mnist(d)


def test_label_out_of_range(tmp_path):
    d = make_folder(tmp_path / "d")
    write_idx(d / NAMES[3], np.full(10, 11, dtype=np.uint8))
    with pytest.raises(DataError, match="label 11 outside 0-9"):
        load_mnist(d)


def test_resolution_order_flag_then_env(tmp_path, monkeypatch):
    flag, env = make_folder(tmp_path / "flag"), make_folder(tmp_path / "env")
    monkeypatch.setenv("SWS_DATA_DIR", str(env))
    assert resolve_data_dir(flag) == flag
    assert resolve_data_dir() == env
    monkeypatch.setenv("SWS_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir()


def test_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    import urllib.request
    monkeypatch.delenv("SWS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="--data-dir or set SWS_DATA_DIR"):
        resolve_data_dir()
    assert not any((tmp_path / "cache" / "sws" / "mnist").glob("*.gz"))


def test_download_checks_sha256_and_writes_atomically(tmp_path, monkeypatch):
    import hashlib
    import io
    import urllib.request

    from sws.zoo import mnist as data
    monkeypatch.delenv("SWS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = make_folder(tmp_path / "src")
    blobs = {n: (src / n).read_bytes() for n in NAMES}
    monkeypatch.setattr(data, "SHA256", {n: hashlib.sha256(b).hexdigest() for n, b in blobs.items()})
    served = []

    def fake(url, timeout):
        name = url.rsplit("/", 1)[1]
        served.append(url)
        # the first mirror serves corrupt bytes: they must be rejected
        return io.BytesIO(b"junk" if url.startswith(data.MIRRORS[0]) else blobs[name])
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    folder = resolve_data_dir()
    assert sorted(p.name for p in folder.iterdir()) == sorted(NAMES)
    assert len(served) == 8
    train, _, _ = load_mnist()
    assert len(train) == 20


def test_holdout_is_apart_from_training_and_validation(tmp_path):
    from sws.zoo.mnist import mnist_splits
    d = make_folder(tmp_path / "d", n_train=40)
    s = mnist_splits(d, val_size=5, holdout_size=7)
    assert (len(s["train"]), len(s["val"]), len(s["holdout"])) == (28, 5, 7)
    rows = {tuple(x.flatten().tolist()) for x in s["train"].x}
    assert not rows & {tuple(x.flatten().tolist()) for x in s["holdout"].x}
    assert not rows & {tuple(x.flatten().tolist()) for x in s["val"].x}
    # the validation split does not move when a holdout is added (earlier runs keep theirs)
    assert torch.equal(load_mnist(d, val_size=5)[1].x, s["val"].x)
    assert mnist_splits(d)["holdout"] is None
    with pytest.raises(DataError, match="holdout_size 30 leave no training data"):
        mnist_splits(d, val_size=10, holdout_size=30)

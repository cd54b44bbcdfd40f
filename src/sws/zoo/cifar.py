"""CIFAR-10 in the standard python-pickle batches (``cifar-10-batches-py``).

The folder holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each
a pickled dict with ``b"data"`` (uint8, 10000 x 3072: the red, green and blue
32 x 32 planes of each image, row-major) and ``b"labels"`` (ints 0-9).  They
are read with a restricted unpickler that builds only dicts, lists, strings,
bytes and numpy arrays, never arbitrary objects, so a crafted file cannot run
code.  Search order for the folder, as for MNIST: the ``data_dir`` argument,
``SWS_CIFAR_DIR``, the per-user cache (``~/.cache/sws/cifar10``); where none
holds it and ``download=True``, the archive is fetched from the authors' site,
checked against its sha256 and unpacked there.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from sws.zoo.mnist import Dataset
from sws.errors import DataError

__all__ = ["load_cifar10", "read_batch", "write_batch", "resolve_cifar_dir", "TRAIN_BATCHES",
           "TEST_BATCH", "URL", "SHA256", "random_crop_flip"]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"   # 170,498,071 bytes
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("copyreg", "_reconstructor"),
            ("builtins", "object"), ("_codecs", "encode")}   # protocol-2 bytes from Python 3


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (images uint8 (n, 3, 32, 32), labels int64 (n,))."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = _Unpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    except Exception as e:   # any unpickling failure of a damaged or hostile file
        raise DataError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a CIFAR python batch (no dict inside)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"{path}: batch lacks 'data' or 'labels'")
    x, y = np.asarray(d["data"]), np.asarray(d["labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be uint8 of shape (n, 3072), got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {len(x)} images but labels of shape {y.shape} ({y.dtype})")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: label {int(y.max() if y.max() > 9 else y.min())} outside 0-9")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def write_batch(path: str | Path, images: np.ndarray, labels, name: str = "batch") -> None:
    """Write a batch file in the original format (for tests and small custom sets)."""
    images = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072)
    d = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": images,
         b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
    Path(path).write_bytes(pickle.dumps(d, protocol=2))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sws" / "cifar10"


def _complete(folder: Path) -> bool:
    return all((folder / n).is_file() for n in TRAIN_BATCHES + (TEST_BATCH,))


def _download(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(URL, timeout=120) as response:
            blob = response.read()
    except OSError as e:
        raise DataError(f"could not download {URL} ({e}); pass data_dir or set SWS_CIFAR_DIR "
                        f"to a folder holding {FOLDER}") from None
    if hashlib.sha256(blob).hexdigest() != SHA256:
        raise DataError(f"{URL}: sha256 mismatch")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".cifar"))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        wanted = {f"{FOLDER}/{n}" for n in TRAIN_BATCHES + (TEST_BATCH, "batches.meta")}
        members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}   # Python >= 3.11.4
        tar.extractall(tmp, members=members, **safe)
    os.replace(tmp / FOLDER, root / FOLDER)
    tmp.rmdir()


def resolve_cifar_dir(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding the six batch files (a folder or its ``cifar-10-batches-py``)."""
    if data_dir is not None or os.environ.get("SWS_CIFAR_DIR"):
        folder = Path(data_dir if data_dir is not None else os.environ["SWS_CIFAR_DIR"])
        for f in (folder, folder / FOLDER):
            if _complete(f):
                return f
        raise DataError(f"{folder}: no CIFAR-10 python batches ({', '.join(TRAIN_BATCHES)}, "
                        f"{TEST_BATCH}) here or in {FOLDER}/")
    folder = _cache_dir() / FOLDER
    if not _complete(folder):
        if not download:
            raise DataError("CIFAR-10 not found: pass data_dir or set SWS_CIFAR_DIR")
        _download(_cache_dir())
    return folder


def _dataset(x: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(torch.from_numpy(x).float().div_(255.0), torch.from_numpy(y))


def load_cifar10(data_dir: str | Path | None = None, download: bool = True,
                 train_subset: int | None = None) -> tuple[Dataset, Dataset]:
    """(train, test): images float32 in [0, 1], shape (n, 3, 32, 32), labels int64."""
    folder = resolve_cifar_dir(data_dir, download)
    parts = [read_batch(folder / n) for n in TRAIN_BATCHES]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if train_subset:
        x, y = x[:train_subset], y[:train_subset]
    tx, ty = read_batch(folder / TEST_BATCH)
    return _dataset(x, y), _dataset(tx, ty)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None,
                     pad: int = 4) -> torch.Tensor:
    """The standard CIFAR augmentation on a batch: random 32x32 crop of the zero-padded image,
    horizontal flip with probability 1/2."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out

"""MNIST-format data: IDX reader, where the files come from, and batching.

Search order for the four ``*-idx?-ubyte[.gz]`` files: the ``data_dir``
argument (CLI ``--data-dir``), the ``SWS_DATA_DIR`` environment variable, the
per-user cache (``$XDG_CACHE_HOME/sws/mnist`` or ``~/.cache/sws/mnist``).  When
none holds them and ``download=True``, they are fetched from public mirrors into
the cache, checked against their published sha256 and written atomically.  A
folder the user points at is never checksum-checked (any MNIST-format data set
is welcome there), only validated structurally.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from sws.errors import DataError

__all__ = ["Dataset", "load_mnist", "mnist_splits", "split_indices", "load_mnist_test", "read_idx", "write_idx",
           "resolve_data_dir", "batches"]

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# sha256 of the gzipped files on the public mirrors (checked after a download only)
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
_MAGIC = {1: 2049, 3: 2051}  # IDX magic numbers: unsigned byte, 1 or 3 dimensions


def _open_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: truncated or corrupt gzip ({e}); download the file again") from None
    return raw


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions (1: labels, 3: images)."""
    path = Path(path)
    data = _open_bytes(path)
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: file too short for an IDX header ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != _MAGIC[ndim]:
        raise DataError(f"{path}: wrong magic number {magic:#x}, expected {_MAGIC[ndim]:#x} "
                        f"(an IDX file of {ndim}-d unsigned bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise DataError(f"{path}: header declares {expected} bytes of data for shape {dims}, "
                        f"file holds {len(body)} (truncated or corrupt)")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = struct.pack(">I", _MAGIC[array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sws" / "mnist"


def _download(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, digest in SHA256.items():
        if (folder / name).is_file():
            continue
        last = None
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name, timeout=60) as response:
                    blob = response.read()
            except OSError as e:
                last = e
                continue
            if hashlib.sha256(blob).hexdigest() != digest:
                last = DataError(f"{mirror + name}: sha256 mismatch")
                continue
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=name, suffix=".part")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / name)
            break
        else:
            raise DataError(f"could not download {name} ({last}); pass --data-dir or set "
                            "SWS_DATA_DIR to a folder holding the MNIST files")


def resolve_data_dir(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Return the folder holding the four IDX files (see module docstring for the order)."""
    if data_dir is not None:
        candidates = [("--data-dir", Path(data_dir))]
    elif os.environ.get("SWS_DATA_DIR"):
        candidates = [("SWS_DATA_DIR", Path(os.environ["SWS_DATA_DIR"]))]
    else:
        candidates = [("cache", _cache_dir())]
    source, folder = candidates[0]
    if source != "cache":
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder ({source}) does not exist")
        missing = [stem for stem in FILES.values() if _find(folder, stem) is None]
        if missing:
            raise DataError(f"{folder}: missing {missing[0]}[.gz] ({source}); the folder must hold "
                            "the four MNIST-format IDX files")
        return folder
    if all(_find(folder, stem) for stem in FILES.values()):
        return folder
    if not download:
        raise DataError("MNIST not found: pass --data-dir or set SWS_DATA_DIR to a folder "
                        "holding the four IDX files")
    _download(folder)
    return folder


class Dataset(TensorDataset):
    """Images as float32 in [0, 1] (pixels / 255), shape (n, 1, 28, 28), and int64 labels:
    a ``TensorDataset`` of (image, label) pairs, batched by indexing."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__(x, y)

    @property
    def x(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def y(self) -> torch.Tensor:
        return self.tensors[1]

    def subset(self, index) -> "Dataset":
        return Dataset(self.x[index], self.y[index])


def _load_split(folder: Path, images: str, labels: str) -> Dataset:
    ipath, lpath = _find(folder, FILES[images]), _find(folder, FILES[labels])
    x = read_idx(ipath, 3)
    y = read_idx(lpath, 1)
    if len(x) != len(y):
        raise DataError(f"{ipath}: {len(x)} images but {lpath.name} has {len(y)} labels")
    if len(y) and y.max() > 9:
        raise DataError(f"{lpath}: label {int(y.max())} outside 0-9")
    xt = torch.from_numpy(x.copy()).float().div_(255.0).unsqueeze(1)
    return Dataset(xt, torch.from_numpy(y.astype(np.int64)))


AUTO_VAL = -1          # val_size: hold out a tenth of the training images, at most AUTO_VAL_MAX
AUTO_VAL_MAX = 5000    # as Table 1 does: 5,000 of MNIST's 60,000


def split_indices(n: int, val_size: int, holdout_size: int = 0, seed: int = 0):
    """(validation, holdout, training) indices of ``n`` training items: a seeded random split,
    the validation items first, then the holdout, the rest for training.  With neither, None
    (the training items stay in their order).  The validation split is the same with and
    without a holdout, so a run made before holdouts existed keeps its split."""
    if not val_size and not holdout_size:
        return None
    if val_size + holdout_size >= n:
        raise DataError(f"val_size {val_size} + holdout_size {holdout_size} leave no training data "
                        f"({n} items); make them smaller")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 12345))
    return perm[:val_size], perm[val_size:val_size + holdout_size], perm[val_size + holdout_size:]


def mnist_splits(data_dir: str | Path | None = None, download: bool = True,
                 train_subset: int | None = None, val_size: int = 0, holdout_size: int = 0,
                 seed: int = 0) -> dict[str, Dataset | None]:
    """MNIST's "train", "val", "holdout" and "test" splits (``load_mnist``; None where empty)."""
    folder = resolve_data_dir(data_dir, download)
    train = _load_split(folder, "train_images", "train_labels")
    test = _load_split(folder, "test_images", "test_labels")
    if train_subset:
        train = train.subset(slice(0, train_subset))
    if val_size == AUTO_VAL:
        val_size = min(AUTO_VAL_MAX, len(train) // 10)
    split = split_indices(len(train), val_size, holdout_size, seed)
    if split is None:
        return {"train": train, "val": None, "holdout": None, "test": test}
    val, holdout, rest = split
    return {"train": train.subset(rest), "val": train.subset(val) if val_size else None,
            "holdout": train.subset(holdout) if holdout_size else None, "test": test}


def load_mnist(data_dir: str | Path | None = None, download: bool = True,
               train_subset: int | None = None, val_size: int = 0,
               seed: int = 0, holdout_size: int = 0) -> tuple[Dataset, Dataset | None, Dataset]:
    """Load (train, validation or None, test).

    Args:
      data_dir: folder with the IDX files; see ``resolve_data_dir``.
      train_subset: keep only the first n training images (quick runs, tests).
      val_size: hold out this many training images (a seeded random split; AUTO_VAL: a tenth,
        at most 5,000) for
        tuning, so the test set is never used to choose settings.
      holdout_size: set aside this many more training images, neither trained on nor used by
        any choice (``mnist_splits`` returns them): a check of the choices made on validation.
    """
    s = mnist_splits(data_dir, download, train_subset, val_size, holdout_size, seed)
    return s["train"], s["val"], s["test"]


def load_mnist_test(data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Only the test split (evaluation needs no training images)."""
    return _load_split(resolve_data_dir(data_dir, download), "test_images", "test_labels")


def batches(data: Dataset, batch_size: int, generator: torch.Generator | None = None):
    """Yield (x, y) minibatches; shuffled when a generator is given."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            yield data.x[start:start + batch_size], data.y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield data.x[idx], data.y[idx]

"""Writing files safely: atomic replacement, and strict state-dict loading with a one-line error.

Every file sws writes goes through ``atomic_write`` (temporary file in the same
folder, fsync, rename), so a crash or a full disk leaves the previous version.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from sws.errors import CheckpointError, StorageError

__all__ = ["atomic_write", "json_bytes", "load_strict"]


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and a rename.

    Raises:
      StorageError: the write failed (disk full, read-only, no permission);
        ``path`` is left as it was and the temporary file is removed.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    except OSError as e:
        raise StorageError(f"{path}: cannot write ({e.strerror or e}); nothing was changed") from None
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600; keep the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise StorageError(f"{path}: cannot write ({e.strerror or e}); the previous version, "
                               "if any, is unchanged") from None
        raise


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def load_strict(module, state: dict, where: str, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch raises
    ``CheckpointError("WHERE: WHAT (first line of PyTorch's complaint)")``."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{where}: {what} ({detail})") from None

"""Run folders and checkpoints: safetensors files with JSON sidecars, never pickle.

A run folder accumulates the stages of one pipeline::

    RUN/config.json            the command and settings of each stage
    RUN/history.json           per-epoch records of every stage (a JSON list)
    RUN/metrics.json           results of each stage
    RUN/pretrained.safetensors + pretrained.json
    RUN/retrained.safetensors  + retrained.json      (network and prior)
    RUN/quantized.safetensors  + quantized.json      (post-processed network, codebook)

Every file is written atomically (temporary file, fsync, rename), so an
interrupted write never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from sws.errors import CheckpointError, RunDirError

__all__ = ["RunDir", "atomic_write", "save_checkpoint", "load_checkpoint"]

STAGES = ("pretrained", "retrained", "quantized")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """``path`` + .safetensors (tensors) and + .json (metadata sidecar)."""
    path = Path(path)
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={"sws": "1"})
    atomic_write(path.with_suffix(".safetensors"), blob)
    atomic_write(path.with_suffix(".json"), _json_bytes(meta))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for p in (st, js):
        if not p.is_file():
            raise CheckpointError(f"{p}: checkpoint file missing")
    try:
        tensors = load_file(st)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{st}: not a readable safetensors file ({e})") from None
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{js}: malformed JSON sidecar ({e})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{js}: sidecar does not name a model")
    return tensors, meta


class RunDir:
    """One run folder; see the module docstring for its layout."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, force: bool = False) -> "RunDir":
        """A new run folder; an existing non-empty one is refused unless ``force``."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise RunDirError(f"{p}: exists and is not a folder; choose another --out")
        if p.is_dir() and any(p.iterdir()) and not force:
            raise RunDirError(f"{p}: run folder exists; choose another --out or pass --force "
                              "to overwrite it")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{p}: cannot create run folder ({e.strerror})") from None
        return cls(p)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        p = Path(path)
        if not p.is_dir():
            raise RunDirError(f"{p}: no such run folder")
        return cls(p)

    def has(self, stage: str) -> bool:
        return self.path.joinpath(stage + ".safetensors").is_file()

    def require(self, stage: str, hint: str) -> None:
        if not self.has(stage):
            raise RunDirError(f"{self.path}: no {stage} checkpoint; {hint}")

    def refuse_overwrite(self, stage: str, force: bool) -> None:
        if self.has(stage) and not force:
            raise RunDirError(f"{self.path}: already holds a {stage} checkpoint; pass --force "
                              "to overwrite it or --out to write a new run folder")

    def save(self, stage: str, tensors: dict, meta: dict) -> None:
        save_checkpoint(self.path / stage, tensors, meta)

    def load(self, stage: str) -> tuple[dict, dict]:
        return load_checkpoint(self.path / stage)

    def read_json(self, name: str, default):
        p = self.path / name
        if not p.is_file():
            return default
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise RunDirError(f"{p}: malformed JSON ({e})") from None

    def write_json(self, name: str, obj) -> None:
        atomic_write(self.path / name, _json_bytes(obj))

    def update_json(self, name: str, key: str, value) -> None:
        data = self.read_json(name, {})
        data[key] = value
        self.write_json(name, data)

    def set_history(self, stage: str, records: list[dict]) -> None:
        """Replace this stage's records in history.json, keeping the other stages'."""
        history = [r for r in self.read_json("history.json", []) if r.get("stage") != stage]
        self.write_json("history.json", history + records)

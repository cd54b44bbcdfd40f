"""Run folders and checkpoints: safetensors files with JSON sidecars, never pickle.

A run folder accumulates the stages of one pipeline::

    RUN/config.json            the command and settings of each stage
    RUN/history.json           per-epoch records of every stage (a JSON list)
    RUN/metrics.json           results of each stage
    RUN/pretrained.safetensors + pretrained.json
    RUN/retrained.safetensors  + retrained.json      (network and prior)
    RUN/quantized.safetensors  + quantized.json      (post-processed network, codebook)
    RUN/state-pretrain.safetensors, RUN/state-retrain.safetensors (+ .json)
                               a stage in progress: its complete training state
                               (sws.method.state), removed when the stage finishes

Every file is written atomically (temporary file, fsync, rename), so an
interrupted write never leaves a half-written file behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save

from sws.errors import CheckpointError, RunDirError
from sws.storage import atomic_write, json_bytes, load_strict

__all__ = ["RunDir", "atomic_write", "load_strict", "save_checkpoint", "load_checkpoint", "save_state", "load_state"]

STAGES = ("pretrained", "retrained", "quantized")


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """``path`` + .safetensors (tensors) and + .json (metadata sidecar)."""
    path = Path(path)
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={"sws": "1"})
    atomic_write(path.with_suffix(".safetensors"), blob)
    atomic_write(path.with_suffix(".json"), json_bytes(meta))


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


STATE_KEY = "sws_state"  # training states carry their JSON inside the safetensors header


def save_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """A training state: ``path``.safetensors holding the tensors *and* the JSON.

    One file, one atomic rename: a kill at any moment leaves either the old or
    the new state, never a mix.  The ``.json`` beside it is a readable copy.
    """
    path = Path(path)
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={"sws": "1", STATE_KEY: json.dumps(meta)})
    atomic_write(path.with_suffix(".safetensors"), blob)
    atomic_write(path.with_suffix(".json"), json_bytes(meta))


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read what ``save_state`` wrote; a missing, truncated or foreign file raises CheckpointError."""
    st = Path(path).with_suffix(".safetensors")
    if not st.is_file():
        raise CheckpointError(f"{st}: no training state to resume from")
    try:
        with safe_open(st, framework="pt") as f:
            meta = json.loads((f.metadata() or {})[STATE_KEY])
        tensors = load_file(st)
    except KeyError:
        raise CheckpointError(f"{st}: not a training state (no '{STATE_KEY}' metadata)") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{st}: not a readable training state ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{st}: malformed training-state metadata")
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

    def state_path(self, stage: str) -> Path:
        """Where a stage's training state lives: ``RUN/state-<stage>``."""
        return self.path / f"state-{stage}"

    def has_state(self, stage: str) -> bool:
        return self.state_path(stage).with_suffix(".safetensors").is_file()

    def save_state(self, stage: str, tensors: dict, meta: dict) -> None:
        save_state(self.state_path(stage), tensors, meta)

    def load_state(self, stage: str) -> tuple[dict, dict]:
        return load_state(self.state_path(stage))

    def remove_state(self, stage: str) -> None:
        """Delete a finished stage's training state."""
        for suffix in (".safetensors", ".json"):
            self.state_path(stage).with_suffix(suffix).unlink(missing_ok=True)

    def complete(self, stage: str) -> bool:
        """Whether a stage's checkpoint is fully written (both files)."""
        return self.has(stage) and (self.path / f"{stage}.json").is_file()

    def read_json(self, name: str, default):
        p = self.path / name
        if not p.is_file():
            return default
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise RunDirError(f"{p}: malformed JSON ({e})") from None

    def write_json(self, name: str, obj) -> None:
        atomic_write(self.path / name, json_bytes(obj))

    def update_json(self, name: str, key: str, value) -> None:
        data = self.read_json(name, {})
        data[key] = value
        self.write_json(name, data)

    def set_history(self, stage: str, records: list[dict]) -> None:
        """Replace this stage's records in history.json, keeping the other stages'."""
        history = [r for r in self.read_json("history.json", []) if r.get("stage") != stage]
        self.write_json("history.json", history + records)

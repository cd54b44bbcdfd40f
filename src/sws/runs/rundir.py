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


from sws.errors import RunDirError
from sws.runs.checkpoint import load_checkpoint, load_state, save_checkpoint, save_state
from sws.storage import atomic_write, json_bytes

__all__ = ["RunDir", "STAGES"]

STAGES = ("pretrained", "retrained", "quantized")


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

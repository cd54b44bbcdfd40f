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

import hashlib
import json
import shutil
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

    def digest(self, stage: str) -> str:
        """sha256 of a stage's tensor file: what the next stage records it was made from."""
        h = hashlib.sha256()
        with open(self.path / f"{stage}.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def _parent(self, stage: str) -> str | None:
        i = STAGES.index(stage)
        return STAGES[i - 1] if i else None

    def save_stage(self, stage: str, tensors: dict, meta: dict) -> None:
        """Save a stage's checkpoint, recording the sha256 of the one it was made from, after
        removing everything made from the earlier version of this stage."""
        parent = self._parent(stage)
        self.invalidate_after(stage)
        if parent is not None:
            meta = {**meta, "source": {"stage": parent, "sha256": self.digest(parent)}}
        self.save(stage, tensors, meta)

    def invalidate_after(self, stage: str | None) -> list[str]:
        """Remove what is downstream of ``stage`` (None: of nothing, i.e. every stage): later
        checkpoints, their training states, history and metrics, snapshots, the ``.sws`` file,
        figures and report.  Returns the names removed."""
        later = STAGES[STAGES.index(stage) + 1:] if stage is not None else STAGES
        removed = []
        for s in later:
            for suffix in (".safetensors", ".json"):
                p = self.path / f"{s}{suffix}"
                if p.is_file():
                    p.unlink()
                    removed.append(p.name)
        for s in ("pretrain", "retrain")[len(STAGES) - len(later):]:
            if self.has_state(s):
                self.remove_state(s)
                removed.append(f"state-{s}")
        for name in ("model.sws", "report.html"):
            if (self.path / name).is_file():
                (self.path / name).unlink()
                removed.append(name)
        if "retrained" in later:
            for folder in ("snapshots", "figures"):
                if (self.path / folder).is_dir():
                    shutil.rmtree(self.path / folder)
                    removed.append(folder)
        metrics = self.read_json("metrics.json", None)
        if metrics is not None:
            keep = {k: v for k, v in metrics.items() if k not in later + ("evaluate", "file")}
            if keep != metrics:
                self.write_json("metrics.json", keep)
        gone = {"pretrained": "pretrain", "retrained": "retrain"}
        history = self.read_json("history.json", None)
        if history is not None:
            keep = [r for r in history if r.get("stage") not in {gone.get(s) for s in later}]
            if keep != history:
                self.write_json("history.json", keep)
        return removed

    def is_current(self, stage: str) -> bool:
        """Whether a stage's checkpoint was made from the current version of the one before it."""
        parent = self._parent(stage)
        if not self.has(stage) or parent is None:
            return self.has(stage)
        source = self.load(stage)[1].get("source")
        if source is None:           # written before sources were recorded: trust it
            return True
        return self.has(parent) and source.get("sha256") == self.digest(parent) and self.is_current(parent)

    def require_current(self, stage: str) -> None:
        if not self.is_current(stage):
            raise RunDirError(f"{self.path}: the {stage} checkpoint was made from an earlier "
                              f"{self._parent(stage)} checkpoint; run that stage again with --force")

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

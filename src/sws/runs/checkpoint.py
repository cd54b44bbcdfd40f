"""Checkpoints and training states as safetensors files.

A checkpoint is the network (and prior) tensors with a JSON description, and a
training state (``sws.method.state``) the same for a loop in progress; both carry
their JSON inside the safetensors header, so each is one atomic file: a crash at any
moment (after ``--force`` too) leaves the old file or the new one, never new tensors
with old metadata.  The ``.json`` written beside each is a readable copy; checkpoints
written before the JSON moved inside (a tensor file and a JSON sidecar) still load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save

from sws.errors import CheckpointError
from sws.storage import atomic_write, json_bytes

__all__ = ["save_checkpoint", "load_checkpoint", "save_state", "load_state", "STATE_KEY",
           "CHECKPOINT_KEY"]

CHECKPOINT_KEY = "sws_checkpoint"  # a checkpoint's JSON, inside its safetensors header


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """``path``.safetensors holding the tensors *and* the JSON ``meta`` (one atomic file),
    then ``path``.json, a readable copy that loading does not need."""
    path = Path(path)
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                metadata={"sws": "1", CHECKPOINT_KEY: json.dumps(meta)})
    atomic_write(path.with_suffix(".safetensors"), blob)
    atomic_write(path.with_suffix(".json"), json_bytes(meta))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and JSON of a checkpoint: the JSON from inside the safetensors file, or for a
    checkpoint written before it moved there, from the ``.json`` sidecar."""
    path = Path(path)
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not st.is_file():
        raise CheckpointError(f"{st}: checkpoint file missing")
    try:
        with safe_open(st, framework="pt") as f:
            inside = (f.metadata() or {}).get(CHECKPOINT_KEY)
        tensors = load_file(st)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{st}: not a readable safetensors file ({e})") from None
    if inside is not None:
        try:
            meta = json.loads(inside)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{st}: malformed JSON metadata ({e})") from None
        where = st
    else:                                   # a two-file checkpoint from before
        if not js.is_file():
            raise CheckpointError(f"{js}: checkpoint file missing (the tensor file holds no "
                                  f"'{CHECKPOINT_KEY}' metadata)")
        try:
            meta = json.loads(js.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{js}: malformed JSON sidecar ({e})") from None
        where = js
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{where}: checkpoint metadata does not name a model")
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

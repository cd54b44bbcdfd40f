"""A training loop's complete state as tensors and JSON, for bit-identical resumption.

The state of a loop at a point between two steps is everything later steps
depend on: the network, the prior, the optimiser's moments and step counts,
the position (epoch, batches done), the data-order generator's state at the
start of that epoch (the epoch's permutation is drawn again and the batches
done are skipped), the global torch RNG, the running sums of the epoch in
progress, the history so far and the prior kernel's workspace (its cached
active sets and grid).  ``capture`` turns them into one flat dict of tensors
and one JSON-able dict; ``restore`` puts them back, checking every shape.
No pickle anywhere: scalars go into the JSON, tensors under flattened keys.
"""

from __future__ import annotations

import dataclasses

import torch

from sws.errors import CheckpointError
from sws.storage import load_strict

__all__ = ["STATE_VERSION", "Position", "capture", "restore", "environment"]

STATE_VERSION = 1


@dataclasses.dataclass
class Position:
    """Where a loop stands: ``step`` batches of ``epoch`` (1-based) are done.

    ``epoch == epochs + 1`` means every epoch is done.  ``data_rng`` is the
    data-order generator's state at the start of ``epoch``; ``sums`` the
    epoch's running totals (cross-entropy, complexity, images, seconds).
    """

    epoch: int
    step: int
    data_rng: torch.Tensor
    sums: dict


def environment() -> dict:
    """What bit-exact resumption depends on besides the state itself: the torch thread count
    (reductions split differently) and whether the prior's C kernel is built."""
    from sws.prior.kernel import kernel_available
    return {"torch_threads": torch.get_num_threads(), "c_kernel": kernel_available(),
            "torch": torch.__version__}


def _model_state(model):
    return {"model." + k: v for k, v in model.state_dict().items()}


def capture(stage: str, config, pos: Position, history: list[dict], model, opt, prior=None,
            extra=None) -> tuple[dict, dict]:
    """(tensors, meta) holding the loop's complete state; see the module docstring.

    ``extra``: an object whose ``state_dict()`` gives (tensors, JSON-able dict) kept with it
    (the accuracy budget's best state)."""
    tensors = _model_state(model)
    tensors["rng.data"] = pos.data_rng
    tensors["rng.torch"] = torch.get_rng_state()
    opt_scalars = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{i}.{k}"] = v
            else:
                opt_scalars.setdefault(str(i), {})[k] = v
    meta = {"model": "training-state", "stage": stage, "version": STATE_VERSION,
            "config": dataclasses.asdict(config), "epoch": pos.epoch, "step": pos.step,
            "sums": pos.sums, "history": history, "optimizer": opt_scalars, "environment": environment()}
    if extra is not None:
        ext, meta["extra"] = extra.state_dict()
        tensors.update({"extra." + k: v for k, v in ext.items()})
    if prior is not None:
        tensors.update({"prior." + k: v for k, v in prior.state_dict().items()})
        ws = prior._workspace.state_dict()
        for k in ("ptr", "idx"):
            if k in ws:
                tensors["workspace." + k] = ws.pop(k)
        meta["workspace"] = ws
    return tensors, meta


def restore(tensors: dict, meta: dict, stage: str, model, opt, prior=None,
            where: str = "training state", extra=None) -> tuple[Position, list[dict]]:
    """Put a captured state back into ``model``, ``opt``, ``prior`` and the global RNG.

    Returns:
      The position to continue from and the history so far.
    Raises:
      CheckpointError: the state belongs to another stage or version, or its
        tensors do not match the model, the prior or the optimiser.
    """
    if meta.get("stage") != stage:
        raise CheckpointError(f"{where}: holds the state of stage {meta.get('stage')!r}, not {stage!r}")
    if meta.get("version") != STATE_VERSION:
        raise CheckpointError(f"{where}: training-state version {meta.get('version')!r} not supported "
                              f"(this sws reads version {STATE_VERSION})")
    groups = {}
    for k, v in tensors.items():
        head, _, rest = k.partition(".")
        groups.setdefault(head, {})[rest] = v
    load_strict(model, groups.get("model", {}), where, "network tensors do not match")
    if prior is not None:
        load_strict(prior, groups.get("prior", {}), where, "prior tensors do not match")
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict] = {}
    for k, v in groups.get("opt", {}).items():
        i, _, name = k.partition(".")
        state.setdefault(int(i), {})[name] = v
    for i, scalars in meta.get("optimizer", {}).items():
        state.setdefault(int(i), {}).update(scalars)
    for i, st in state.items():
        if not 0 <= i < len(params):
            raise CheckpointError(f"{where}: optimiser state for parameter {i}, the model has {len(params)}")
        for name, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape != params[i].shape:
                raise CheckpointError(f"{where}: optimiser state {name} of parameter {i} has shape "
                                      f"{tuple(v.shape)}, the parameter {tuple(params[i].shape)}")
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
    try:
        torch.set_rng_state(tensors["rng.torch"])
        pos = Position(int(meta["epoch"]), int(meta["step"]), tensors["rng.data"], dict(meta["sums"]))
        if prior is not None and "workspace" in meta:
            ws = dict(meta["workspace"])
            ws.update({k: groups["workspace"][k] for k in ("ptr", "idx") if k in groups.get("workspace", {})})
            prior._workspace.load_state_dict(ws)
        if extra is not None:
            extra.load_state_dict(groups.get("extra", {}), meta.get("extra") or {})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where}: incomplete or malformed training state ({e})") from None
    return pos, list(meta.get("history", []))

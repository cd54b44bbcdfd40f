"""Soft weight-sharing for people who keep their own training loop.

In the spirit of torchao's ``quantize_(model, config)``: attach a prior to a
model, add its gradient after every ``loss.backward()``, quantise the model in
place at the end, save it::

    sws_ = sws.SoftWeightSharing(model, "tutorial", n_train=len(train_set))
    opt = sws_.optimizer()                     # Adam: the network's and the mixture's rates
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward()
        sws_.backward()                        # + (tau / N) dC/dp, fused (paper Eq. 3)
        opt.step()
    sws_.quantize_()                           # merge, snap, assign; dead units
    sws_.save("model.sws")

``sws.compress`` and every other entry point build on the same pieces: the
parameter selection, the prior, the optimiser's groups, ``quantize_`` and the
writer.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.nn.utils.weight_norm import WeightNorm

from sws.config import QuantizeConfig, RetrainConfig, retrain_config
from sws.errors import ConfigError
from sws.method import files
from sws.method.loop import retrain_optimizer
from sws.method.postprocess import Quantized, layer_stats, postprocess_
from sws.method.snap import Snap
from sws.prior import GaussianMixturePrior

__all__ = ["NORM_TYPES", "select_parameters", "resolve_config", "SoftWeightSharing"]

# parameters of these layers are not quantised by default: a normalisation's
# scale and shift are few, and snapping them to shared values costs accuracy
NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                nn.LocalResponseNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

Pattern = str | type


def _matches(name: str, module: nn.Module, patterns: Iterable[Pattern]) -> bool:
    for p in patterns:
        if isinstance(p, type) and isinstance(module, p):
            return True
        if isinstance(p, str) and fnmatch.fnmatchcase(name, p):
            return True
    return False


def select_parameters(model: nn.Module, include: Iterable[Pattern] | None = None,
                      exclude: Iterable[Pattern] | None = None, cover: str = "all",
                      skip_norm: bool = True) -> dict[str, nn.Parameter]:
    """The parameters the prior covers, by name (each tied tensor once, under its first name).

    A trainable parameter is covered when it matches ``include`` (default:
    everything), matches nothing in ``exclude``, is not a bias when ``cover`` is
    "weights", and, with ``skip_norm``, does not belong to a normalisation layer
    (``NORM_TYPES``).  A pattern is a glob over the parameter's full name
    (``"conv1.*"``, ``"*.bias"``) or a module class, which matches the
    parameters the layer holds itself (``nn.Conv2d``, ``nn.BatchNorm2d``).
    The tutorial covers every trainable tensor, biases included (SPEC section 1).
    A covered tensor must be float32 or float64 (``ConfigError`` otherwise: the file stores
    quantised tensors as float32 codebook entries) and not a parametrization's (weight_norm,
    spectral_norm: ``ConfigError``, with the fix).
    """
    if cover not in ("all", "weights"):
        raise ConfigError(f"unknown cover {cover!r}; choose 'all' or 'weights'")
    include = list(include) if include is not None else None
    exclude = list(exclude or [])
    for p in (include or []) + exclude:
        if not isinstance(p, (str, type)):
            raise ConfigError(f"a pattern must be a glob string or a module class, got {p!r}")
    seen, out = set(), {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if id(p) in seen:
                continue
            seen.add(id(p))
            if not p.requires_grad or (cover == "weights" and p_name.endswith("bias")):
                continue
            if skip_norm and isinstance(module, NORM_TYPES):
                continue
            if include is not None and not _matches(name, module, include):
                continue
            if _matches(name, module, exclude):
                continue
            fix = _parametrization_of(mod_name, module, p_name)
            if fix:
                raise ConfigError(f"the prior would cover {name}, a tensor of a parametrization (weight_norm, "
                                  "spectral_norm, ...): snapping it does not snap the weight the layer uses, and "
                                  f"a row snapped to zeros divides by zero; remove the parametrization first ({fix}) "
                                  f"or leave the tensor out (exclude=[{name!r}])")
            if p_name.endswith("_orig") and any(isinstance(h, prune.BasePruningMethod) and h._tensor_name == p_name[:-5]
                                                for h in module._forward_pre_hooks.values()):
                raise ConfigError(f"the prior would cover {name}, of a layer pruned with torch.nn.utils.prune: the "
                                  "file would store its mask uncompressed (32 bits a weight); make the pruning "
                                  f"permanent first (torch.nn.utils.prune.remove({_module_ref(mod_name)}, "
                                  f"{p_name[:-5]!r})) or leave the tensor out (exclude=[{name!r}])")
            if getattr(module, "max_norm", None) is not None and isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                raise ConfigError(f"the prior would cover {name}, an embedding with max_norm={module.max_norm:g}: "
                                  "its forward pass rescales rows in place, moving snapped weights off the "
                                  f"codebook; set {_module_ref(mod_name)}.max_norm = None or leave the tensor out "
                                  f"(exclude=[{name!r}])")
            if p.dtype not in (torch.float32, torch.float64):   # what the file stores quantised
                raise ConfigError(f"the prior would cover {name}, of dtype {p.dtype}: sws retrains and stores "
                                  "float32 or float64 weights; convert the model first (model.float())")
            out[name] = p
    return out


def _parametrization_of(mod_name: str, module: nn.Module, p_name: str) -> str:
    """The call that removes the parametrization whose tensor ``p_name`` of ``module`` is (not a
    weight the layer uses), or "": the originals of ``torch.nn.utils.parametrize``
    (``layer.parametrizations.weight.original0``, ...) and the ``_g`` / ``_v`` of the older
    ``torch.nn.utils.weight_norm``."""
    if isinstance(module, parametrize.ParametrizationList):
        layer, _, attr = ("." + mod_name).rpartition(".parametrizations.")
        return f"torch.nn.utils.parametrize.remove_parametrizations({_module_ref(layer[1:])}, {attr!r})"
    for h in getattr(module, "_forward_pre_hooks", {}).values():
        if isinstance(h, WeightNorm) and p_name in (h.name + "_g", h.name + "_v"):
            return f"torch.nn.utils.remove_weight_norm({_module_ref(mod_name)}, {h.name!r})"
    return ""


def _module_ref(name: str) -> str:
    return f"model.get_submodule({name!r})" if name else "model"


def resolve_config(config: RetrainConfig | str, overrides: dict) -> RetrainConfig:
    """A ``RetrainConfig`` from a preset name with overrides, or a given config (no overrides)."""
    if isinstance(config, RetrainConfig):
        if overrides:
            raise ConfigError("overrides apply to a preset name; set them on the RetrainConfig instead")
        cfg = config
    elif isinstance(config, str):
        cfg = retrain_config(config, **overrides)
    else:
        raise ConfigError(f"config must be a preset name or a RetrainConfig, got {type(config).__name__}")
    cfg.validate()
    return cfg


class SoftWeightSharing:
    """The prior attached to one model: what a training loop needs, nothing it must give up.

    Args:
      model: any module, pretrained (its weights initialise the "range" prior).
      config: a preset name or a ``RetrainConfig``; ``overrides`` apply to a preset.
      n_train: the training set's size N in tau / N (SPEC section 1).
      include, exclude, skip_norm: which parameters the prior covers (``select_parameters``).
      merge_threshold, dead_units: post-processing settings (``QuantizeConfig``).
    """

    def __init__(self, model: nn.Module, config: RetrainConfig | str = "tutorial", *, n_train: int,
                 include: Iterable[Pattern] | None = None, exclude: Iterable[Pattern] | None = None,
                 skip_norm: bool = True, merge_threshold: float = QuantizeConfig.merge_threshold,
                 dead_units: bool = QuantizeConfig.drop_dead_units, **overrides):
        self.config = resolve_config(config, overrides)
        self.quantize_config = QuantizeConfig(merge_threshold, dead_units)
        self.quantize_config.validate()
        if not (isinstance(n_train, int) and n_train > 0):
            raise ConfigError(f"n_train must be the training set's size (a positive integer), got {n_train!r}")
        self.model, self.n_train = model, n_train
        self.covered = select_parameters(model, include, exclude, self.config.prior.cover, skip_norm)
        if not self.covered:
            raise ConfigError("the prior covers no parameter: check include / exclude")
        for name, p in self.covered.items():
            if not bool(torch.isfinite(p.detach()).all()):
                raise ConfigError(f"{name} holds non-finite values (NaN or inf): start from a network whose "
                                  "weights are finite")
        device = next(iter(self.covered.values())).device
        self.prior = GaussianMixturePrior(self.config.prior, list(self.covered.values())).to(device)
        self.weights = list(self.covered.values())
        self.steps_done = 0
        self.quantized: Quantized | None = None

    def optimizer(self) -> torch.optim.Adam:
        """Adam with the four learning rates: network weights, means, log-precisions, mixing."""
        return retrain_optimizer(self.model, self.prior, self.config)

    def param_groups(self) -> list[dict]:
        """The mixture's three parameter groups with their rates, to add to an optimiser of
        your own (``opt.add_param_group(g)`` for each)."""
        return [{"params": g["params"], "lr": g["lr"]}       # the rest from the optimiser's defaults
                for g in retrain_optimizer(self.model, self.prior, self.config).param_groups[1:]]

    def tau(self, epoch: float | None = None) -> float:
        """tau at ``epoch`` (fractional) per the config's schedule; the final tau when None."""
        return self.config.tau if epoch is None else self.config.tau_at(epoch)

    def backward(self, epoch: float | None = None, tau: float | None = None):
        """Add (tau / N) dC/dp to the ``.grad`` of the covered weights and of the mixture.

        Call after ``loss.backward()`` and before ``optimizer.step()``.  ``epoch`` (fractional)
        follows the tau schedule; ``tau`` overrides it.  Returns C as a 0-d tensor on the
        prior's device (``float()`` it when you log it: on a GPU that synchronises).
        """
        tau = self.tau(epoch) if tau is None else tau
        self.steps_done += 1
        return self.prior.backward_complexity(self.weights, tau / self.n_train)

    def snapped(self):
        """A context in which the covered weights hold the values post-processing would give
        them now (``sws.method.snap``): run the forward and backward passes of your last epochs
        inside it, and ``backward()`` and ``optimizer.step()`` after it, to train the network
        you will keep (the snap phase of ``sws.compress``)::

            with sws_.snapped():
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(); loss.backward()
            sws_.backward(); opt.step()
        """
        return Snap(self.prior, self.weights, self.quantize_config.merge_threshold).applied()

    def complexity(self) -> torch.Tensor:
        """C of the current weights, differentiable (for logging or a loss of your own)."""
        return self.prior.complexity(self.weights)

    def log_values(self) -> dict:
        """Scalars to log: the mixture's state (zero component's sd, pi0, the means' range)."""
        s = self.prior.summary()
        return {"sws/sd0": s["stds"][0], "sws/pi0": s["pis"][0],
                "sws/mean_min": min(s["means"]), "sws/mean_max": max(s["means"])}

    def quantize_(self, recalibrate=None, **finetune) -> Quantized:
        """Post-process the model in place: merge, snap, assign, drop dead units and (given a
        training set) re-estimate batch-norm statistics; ``finetune=train, finetune_epochs=N``
        also fine-tunes the codebook (``sws.method.postprocess.postprocess_``).  Returns what was done."""
        q = self.quantize_config
        self.quantized = postprocess_(self.model, self.prior, self.covered, q.merge_threshold,
                                      dead_units=q.drop_dead_units, recalibrate=recalibrate,
                                      batch_size=self.config.batch_size, seed=self.config.seed,
                                      probe=finetune.get("finetune", recalibrate), **finetune)
        return self.quantized

    def stats(self) -> dict:
        """Per-layer and total non-zero share and distinct values of the covered tensors."""
        return layer_stats(self.covered)

    def save(self, path, **info) -> int:
        """Write the quantised model as a ``.sws`` file; return its size in bytes."""
        if self.quantized is None:
            raise ConfigError("quantise the model first (quantize_()), then save it")
        return files.save(path, self.model, codebook=self.quantized.codebook, quantized=self.quantized.names,
                          **info)

"""Settings as dataclasses with the tutorial's defaults; presets are named overrides.

Sources: SPEC sections 2-4 (``../shared/reference/SPEC.md``) and the authors'
tutorial.  ``PRESETS["paper"]`` holds the paper's deviations from the tutorial.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from sws.errors import ConfigError
from sws.zoo.models import MODELS

__all__ = ["LR_SCHEDULES", "lr_factor", "PretrainConfig", "PriorConfig", "RetrainConfig",
           "QuantizeConfig", "PRESETS", "retrain_config", "from_dict"]

LR_SCHEDULES = ("constant", "cosine")


def lr_factor(schedule: str, done: int, total: int) -> float:
    """The learning-rate multiplier after ``done`` of ``total`` steps: 1 throughout for
    "constant"; for "cosine", half a cosine from 1 down to 0 at the last step."""
    if schedule == "constant" or total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(done, total) / total))


@dataclass
class PretrainConfig:
    model: str = "tutorial-conv"     # the tutorial's 642k-parameter conv net; or PKG.MODULE:FUNCTION
    data: str = ""                   # PKG.MODULE:FUNCTION returning (train, val, test); "": MNIST
    epochs: int = 20                 # tutorial runs 100; about 20 reach the same error
    batch_size: int = 256            # tutorial
    lr: float = 1e-3                 # Adam, tutorial
    lr_schedule: str = "constant"    # "cosine": anneal lr to 0 over all steps (per step)
    seed: int = 0
    input_norm: str = "none"         # tutorial feeds pixels / 255 unchanged
    weight_init: str = "torch"       # "keras": Glorot-uniform, zero biases, as the tutorial's Keras nets
    train_subset: int = 0            # 0: all training images
    val_size: int = 0                # held-out validation images (budget, tuning); 0: none; -1: a tenth, <= 5000
    augment: str = ""                # training batches shifted / mirrored: "shift:2+flip" (sws.method.augment)
    holdout_size: int = 0            # training images set aside from training and from every choice; 0: none

    def validate(self):
        from sws.zoo.refs import is_ref
        if self.model not in MODELS and not is_ref(self.model):
            raise ConfigError(f"model {self.model!r} is neither a reference net ({', '.join(MODELS)}) "
                              "nor PKG.MODULE:FUNCTION returning an nn.Module")
        if self.data and not is_ref(self.data):
            raise ConfigError(f"data {self.data!r}: expected PKG.MODULE:FUNCTION returning (train, val, test)")
        _positive(self, "epochs", "batch_size", "lr")
        if self.input_norm not in ("none", "standardize"):
            raise ConfigError(f"input_norm must be 'none' or 'standardize', got {self.input_norm!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                              f"got {self.lr_schedule!r}")
        if self.weight_init not in ("torch", "keras"):
            raise ConfigError(f"weight_init must be 'torch' or 'keras', got {self.weight_init!r}")
        if self.train_subset < 0 or self.val_size < -1:
            raise ConfigError("train_subset must be >= 0 and val_size >= 0 (or -1: automatic)")
        if self.holdout_size < 0:
            raise ConfigError(f"holdout_size must be >= 0, got {self.holdout_size}")
        _check_augment(self.augment)


@dataclass
class PriorConfig:
    n_components: int = 16           # tutorial: zero component + 15 (paper: 17)
    pi0: float = 0.99                # fixed mixing proportion of the zero component (paper: 0.999)
    init: str = "linspace"           # tutorial: linspace(-init_range, init_range); "range": over the weights
    init_range: float = 0.6          # tutorial
    init_sigma: float = 0.25         # tutorial: every component starts with sigma 0.25
    zero_alpha: float = 5000.0       # Gamma hyper-prior on the zero precision (expected variance 4e-4)
    zero_beta: float = 2.0
    alpha: float = 250.0             # Gamma hyper-prior on the other precisions
    beta: float = 0.1
    cover: str = "all"               # tutorial covers every trainable tensor; "weights": skip biases
    learn_pi0: bool = False          # paper option: learn pi0 under a Beta(pi0_a, pi0_b) prior
    pi0_a: float = 1.0               # Beta prior on pi0 (used when learn_pi0); a=b=1 is flat
    pi0_b: float = 1.0

    def validate(self):
        if self.n_components < 2:
            raise ConfigError(f"n_components must be at least 2 (a zero component and one more), "
                              f"got {self.n_components}")
        if self.n_components > 256:
            raise ConfigError(f"n_components must be at most 256, got {self.n_components}")
        if not 0.0 < self.pi0 < 1.0:
            raise ConfigError(f"pi0 must lie strictly between 0 and 1, got {self.pi0}")
        if self.init not in ("linspace", "range", "paper"):
            raise ConfigError(f"init must be 'linspace', 'range' or 'paper', got {self.init!r}")
        if self.cover not in ("all", "weights"):
            raise ConfigError(f"cover must be 'all' or 'weights', got {self.cover!r}")
        _positive(self, "init_range", "init_sigma", "zero_alpha", "zero_beta", "alpha", "beta",
                  "pi0_a", "pi0_b")


MIN_RETRAIN_STEPS = 6000   # the presets' rates move the mixture far enough in about this many Adam steps
                           # (the tutorial: 30 epochs of MNIST's 55,000 training images at 256: 6,450)


def passes_per_epoch(epochs: int, steps_per_pass: int, min_steps: int | None = None) -> int:
    """How many passes over a small training set one epoch of retraining takes (1 for MNIST).

    The presets' learning rates were set for MNIST's number of steps: in far fewer, the mixture
    does not sharpen, post-processing merges its components, and every weight snaps to zero.
    Where ``epochs * steps_per_pass`` falls short of ``min_steps`` (default
    ``MIN_RETRAIN_STEPS``), an epoch becomes the k passes that reach it, so every setting counted
    in epochs (the schedules, patience, the snap phase, the budget's watches and tau controller)
    keeps its meaning in steps.  ``sws.compress`` applies it when ``epochs`` is the preset's."""
    min_steps = MIN_RETRAIN_STEPS if min_steps is None else min_steps
    total = max(int(epochs), 1) * max(int(steps_per_pass), 1)
    return 1 if total >= min_steps else -(-min_steps // total)


@dataclass
class RetrainConfig:
    epochs: int = 30                 # tutorial
    batch_size: int = 256            # tutorial
    tau: float = 0.003               # tutorial: loss = CE + tau / N * complexity
    lr_weights: float = 5e-4         # tutorial's four Adam learning rates
    lr_means: float = 1e-4
    lr_log_precisions: float = 3e-3
    lr_mixing: float = 3e-3
    tau_schedule: str = "constant"   # tutorial; "linear" / "exponential": warm tau up from tau_start
    tau_start: float = 0.0           # tau at step 0 of a warm-up (> 0 for "exponential")
    tau_warmup_epochs: float = 0.0   # epochs over which tau goes from tau_start to tau
    lr_schedule: str = "constant"    # tutorial; "cosine": all four rates annealed to 0 (per step)
    zero_sharpen: float = 1.0        # the zero component's target precision grows by this factor (1: tutorial)
    seed: int = 0
    budget: bool = True              # keep the best post-processed state within the accuracy budget
    max_error_increase: float = 0.3  # points of validation error over the pretrained net (issue 13)
    patience: int = 5                # epochs without a better kept state before stopping (0: never)
    tau_control: float = 1.5         # the budget's tau controller: x or / per epoch (1: off; issue 13)
    watch_every: int = 0             # with the budget: also watch every N steps within an epoch (0: epoch ends)
    snap_epochs: int = 5             # with the budget: then train the kept state through the snap (sws.method.snap)
    snap_lr_schedule: str = ""       # the rates over the snap phase, restarted: "" as lr_schedule
    distill: float = 0.0             # weight of the pretrained net's soft targets in the data term (0: off)
    distill_temperature: float = 4.0  # their softmax temperature
    augment: str = ""                # training batches shifted / mirrored, as PretrainConfig.augment
    prior: PriorConfig = field(default_factory=PriorConfig)

    def validate(self):
        _positive(self, "epochs", "batch_size", "lr_weights", "lr_means", "lr_log_precisions",
                  "lr_mixing")
        if not (self.tau >= 0 and math.isfinite(self.tau)):
            raise ConfigError(f"tau must be a finite number >= 0, got {self.tau}")
        if self.tau_schedule not in ("constant", "linear", "exponential"):
            raise ConfigError(f"tau_schedule must be 'constant', 'linear' or 'exponential', "
                              f"got {self.tau_schedule!r}")
        if not (self.tau_start >= 0 and math.isfinite(self.tau_start)):
            raise ConfigError(f"tau_start must be a finite number >= 0, got {self.tau_start}")
        if not (self.tau_warmup_epochs >= 0 and math.isfinite(self.tau_warmup_epochs)):
            raise ConfigError(f"tau_warmup_epochs must be >= 0, got {self.tau_warmup_epochs}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                              f"got {self.lr_schedule!r}")
        if not (self.zero_sharpen >= 1 and math.isfinite(self.zero_sharpen)):
            raise ConfigError(f"zero_sharpen must be a finite factor >= 1, got {self.zero_sharpen}")
        if not (self.max_error_increase >= 0 and math.isfinite(self.max_error_increase)):
            raise ConfigError(f"max_error_increase must be a number of points >= 0, got {self.max_error_increase}")
        if not (self.tau_control >= 1 and math.isfinite(self.tau_control)):
            raise ConfigError(f"tau_control must be a finite factor >= 1, got {self.tau_control}")
        if not (isinstance(self.watch_every, int) and self.watch_every >= 0):
            raise ConfigError(f"watch_every must be a number of steps >= 0, got {self.watch_every!r}")
        if not (isinstance(self.snap_epochs, int) and self.snap_epochs >= 0):
            raise ConfigError(f"snap_epochs must be a number of epochs >= 0, got {self.snap_epochs!r}")
        if self.snap_lr_schedule not in ("",) + LR_SCHEDULES:
            raise ConfigError(f"snap_lr_schedule must be one of {', '.join(LR_SCHEDULES)} (or empty: as "
                              f"lr_schedule), got {self.snap_lr_schedule!r}")
        if not (0 <= self.distill <= 1):
            raise ConfigError(f"distill must be a weight from 0 to 1, got {self.distill}")
        if not (self.distill_temperature > 0 and math.isfinite(self.distill_temperature)):
            raise ConfigError(f"distill_temperature must be a finite number > 0, got {self.distill_temperature}")
        _check_augment(self.augment)
        if not (isinstance(self.patience, int) and self.patience >= 0):
            raise ConfigError(f"patience must be an integer >= 0, got {self.patience!r}")
        if self.tau_schedule == "exponential" and not (self.tau_start > 0 and self.tau > 0):
            raise ConfigError("an exponential tau warm-up needs tau_start > 0 and tau > 0")
        self.prior.validate()

    def zero_beta_at(self, progress: float) -> float:
        """The Gamma hyper-prior's rate on the zero component's precision after ``progress``
        (0..1) of retraining: its target precision (alpha - 1) / beta grows geometrically by
        ``zero_sharpen`` (paper section 3: the zero component should become a sharp spike)."""
        return self.prior.zero_beta / self.zero_sharpen ** min(max(progress, 0.0), 1.0)

    def tau_at(self, epoch: float) -> float:
        """tau after ``epoch`` (fractional) epochs of retraining, per the schedule."""
        if self.tau_schedule == "constant" or self.tau_warmup_epochs == 0:
            return self.tau
        t = min(1.0, epoch / self.tau_warmup_epochs)
        if self.tau_schedule == "linear":
            return self.tau_start + (self.tau - self.tau_start) * t
        return self.tau_start * (self.tau / self.tau_start) ** t


@dataclass
class QuantizeConfig:
    merge_threshold: float = 1e-2    # merge components whose KL divergence (either way) is below this
    drop_dead_units: bool = True     # then zero the weights that cannot change the output (lossless)
    finetune_epochs: int = 3         # then train the codebook values, assignments fixed (beyond the paper)
    finetune_lr: float = 3e-3        # Adam rate of that fine-tuning (LeNet-300-100: +0.21 points back)

    def validate(self):
        if not self.merge_threshold >= 0:
            raise ConfigError(f"merge_threshold must be >= 0, got {self.merge_threshold}")
        if not (isinstance(self.finetune_epochs, int) and self.finetune_epochs >= 0):
            raise ConfigError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}")
        _positive(self, "finetune_lr")


PRESETS: dict[str, dict] = {
    "tutorial": {},
    # the paper (ICLR 2017, section 6.1): 2^4 + 1 components, pi0 0.999, mixture lr 5e-4, 100 epochs
    # init "paper": means over the pretrained weights' range, each sd one spacing (section 4.2)
    "paper": {"epochs": 100, "lr_means": 5e-4, "lr_log_precisions": 5e-4, "lr_mixing": 5e-4,
              "prior": {"n_components": 17, "pi0": 0.999, "init": "paper"}},
    # the paper's ResNet (light), WRN-16-4: its settings with 2^6 components for a net 6x the size;
    # weights only (the convolutions have no biases); sws.compress leaves batch-norm unquantised
    "resnet": {"epochs": 100, "lr_means": 5e-4, "lr_log_precisions": 5e-4, "lr_mixing": 5e-4,
               "prior": {"n_components": 64, "pi0": 0.999, "init": "range", "cover": "weights"}},
}


def _positive(cfg, *names):
    for name in names:
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _check_augment(spec):
    from sws.method.augment import parse
    parse(spec)


def from_dict(cls, data: dict):
    """Build a config dataclass from a dict, rejecting unknown or ill-typed keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r} for {cls.__name__}; known: "
                              f"{', '.join(fields)}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"setting {key!r} must be a mapping")
            value = from_dict(type(default), value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"setting {key!r} must be true or false, got {value!r}")
        elif not isinstance(default, (int, float, str)):
            pass
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif type(value) is not type(default):
            raise ConfigError(f"setting {key!r} must be {type(default).__name__}, "
                              f"got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def retrain_config(preset: str = "tutorial", **overrides) -> RetrainConfig:
    """The named preset with overrides applied (keys of RetrainConfig or PriorConfig)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[preset].items()}
    prior_keys = {f.name for f in dataclasses.fields(PriorConfig)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in prior_keys:
            data.setdefault("prior", {})[key] = value
        else:
            data[key] = value
    cfg = from_dict(RetrainConfig, data)
    cfg.validate()
    return cfg

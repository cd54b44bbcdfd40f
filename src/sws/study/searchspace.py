"""The search space of ``sws search``: the paper's hyper-parameters, their ranges, the mapping to configs.

The paper tuned 13 hyper-parameters by Bayesian optimisation (section 6.1): the
four learning rates, the number of components J, tau, the Gamma hyper-priors
of the zero and the other components, and the Beta prior on pi0.  ``SPACE``
holds them with the tau schedule, pi0 itself and the merge threshold; each
range and why it is what it is.  Users narrow ranges with ``make_space``, which
rejects bad ones with a one-line ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from sws.config import QuantizeConfig, retrain_config
from sws.errors import ConfigError

__all__ = ["Param", "SPACE", "TUTORIAL", "space_help", "make_space", "suggest", "configs"]


@dataclass(frozen=True)
class Param:
    """One searched setting: a numeric range (log-uniform when ``log``) or a list of choices."""
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple = ()
    domain: tuple = (0.0, math.inf)   # where the setting itself is valid
    when: tuple = ()                  # (parent, allowed values): searched only then
    why: str = ""


# Ranges span about a decade either side of the tutorial's value, log-scale for scale parameters.
SPACE: dict[str, Param] = {
    "lr_weights": Param(1e-5, 3e-3, log=True, why="tutorial 5e-4; above ~3e-3 Adam wrecks the pretrained net"),
    "lr_means": Param(1e-5, 3e-3, log=True, why="tutorial 1e-4, paper 5e-4"),
    "lr_log_precisions": Param(1e-4, 3e-2, log=True, why="tutorial 3e-3, paper 5e-4"),
    "lr_mixing": Param(1e-4, 3e-2, log=True, why="tutorial 3e-3, paper 5e-4"),
    "n_components": Param(4, 32, log=True, integer=True, domain=(2, 256),
                          why="tutorial 16, paper 17; fewer give a smaller codebook"),
    "tau": Param(3e-4, 3e-2, log=True, why="tutorial 3e-3: weight of the complexity term"),
    "tau_schedule": Param(choices=("constant", "linear", "exponential"),
                          why="tutorial constant; the tutorial suggests annealing tau"),
    "tau_warmup_frac": Param(0.1, 0.9, domain=(0.0, 1.0), when=("tau_schedule", ("linear", "exponential")),
                             why="share of the retraining epochs tau warms up over"),
    "tau_start_ratio": Param(1e-3, 1e-1, log=True, domain=(0.0, 1.0), when=("tau_schedule", ("exponential",)),
                             why="an exponential warm-up starts at tau x this (linear starts at 0)"),
    "zero_alpha": Param(5e2, 5e4, log=True, why="Gamma on the zero precision, default 5000"),
    "zero_beta": Param(0.2, 20.0, log=True, why="default 2 (expected zero variance beta/alpha 4e-4)"),
    "alpha": Param(25.0, 2500.0, log=True, why="Gamma on the other precisions, default 250"),
    "beta": Param(0.01, 1.0, log=True, why="default 0.1"),
    "one_minus_pi0": Param(1e-3, 1e-1, log=True, domain=(0.0, 0.5),
                           why="1 - pi0 (fixed, or its start when learned): tutorial 0.01, paper 0.001"),
    "learn_pi0": Param(choices=(False, True), why="paper option: learn pi0 under a Beta prior"),
    "pi0_a": Param(1.0, 1e4, log=True, when=("learn_pi0", (True,)), why="Beta(a, b) on pi0; mean a/(a+b)"),
    "pi0_b": Param(0.5, 100.0, log=True, when=("learn_pi0", (True,)), why="b < 1 pulls pi0 towards 1"),
    "merge_threshold": Param(1e-4, 1.0, log=True, why="KL below which components merge, default 1e-2"),
}

# The tutorial's settings in SPACE's terms: queued as the study's first trial, the untuned baseline.
TUTORIAL = {"lr_weights": 5e-4, "lr_means": 1e-4, "lr_log_precisions": 3e-3, "lr_mixing": 3e-3,
            "n_components": 16, "tau": 3e-3, "tau_schedule": "constant", "zero_alpha": 5000.0,
            "zero_beta": 2.0, "alpha": 250.0, "beta": 0.1, "one_minus_pi0": 0.01,
            "learn_pi0": False, "merge_threshold": 1e-2}

def space_help() -> str:
    """One line per searched parameter: its name, default range or choices, and why."""
    rows = []
    for name, p in SPACE.items():
        rng = ("|".join(str(c).lower() for c in p.choices) if p.choices
               else f"{p.low:g}..{p.high:g}{' log' if p.log else ''}")
        rows.append(f"{name} {rng} ({p.why})")
    return "\n".join(rows)


def _number(name: str, text, integer: bool) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"search range for {name}: {text!r} is not a number") from None
    if not math.isfinite(value) or (integer and not value.is_integer()):
        raise ConfigError(f"search range for {name}: {text!r} is not a finite "
                          f"{'integer' if integer else 'number'}")
    return value


def _known(name: str) -> Param:
    if name not in SPACE:
        raise ConfigError(f"unknown search parameter {name!r}; known: {', '.join(SPACE)}")
    return SPACE[name]


def make_space(ranges: dict | None = None, choices: dict | None = None) -> dict[str, Param]:
    """SPACE with user ranges ``{name: (low, high)}`` and choices ``{name: [values]}``, checked."""
    space = dict(SPACE)
    for name, bounds in (ranges or {}).items():
        p = _known(name)
        if p.choices:
            raise ConfigError(f"search parameter {name} takes choices, not a range: "
                              f"--choice {name} {','.join(str(c).lower() for c in p.choices)}")
        if len(bounds) != 2:
            raise ConfigError(f"search range for {name} needs two bounds, low and high")
        low, high = (_number(name, b, p.integer) for b in bounds)
        if not low < high:
            raise ConfigError(f"search range for {name}: low {low:g} must be below high {high:g}")
        if p.log and low <= 0:
            raise ConfigError(f"search range for {name} is log-scale: bounds must be > 0, got {low:g}")
        lo, hi = p.domain
        if low < lo or high > hi:
            raise ConfigError(f"search range for {name}: {low:g}..{high:g} leaves its domain "
                              f"{lo:g}..{hi:g}")
        space[name] = dataclasses.replace(p, low=low, high=high)
    for name, values in (choices or {}).items():
        p = _known(name)
        if not p.choices:
            raise ConfigError(f"search parameter {name} takes a range, not choices: "
                              f"--range {name} LOW HIGH")
        by_text = {str(c).lower(): c for c in p.choices}
        picked = []
        for v in values:
            key = str(v).lower()
            if key not in by_text:
                raise ConfigError(f"search choice for {name}: {v!r} is not one of {', '.join(by_text)}")
            if by_text[key] not in picked:
                picked.append(by_text[key])
        if not picked:
            raise ConfigError(f"search choice for {name}: give at least one value")
        space[name] = dataclasses.replace(p, choices=tuple(picked))
    return space


def suggest(trial, space: dict[str, Param]) -> dict:
    """The trial's settings, sampled from ``space`` (conditional ones only where they apply)."""
    params = {}
    for name, p in space.items():
        if p.when and params.get(p.when[0]) not in p.when[1]:
            continue
        if p.choices:
            params[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.integer:
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            params[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
    return params


def configs(params: dict, settings: dict):
    """(RetrainConfig, QuantizeConfig) for one trial's parameters and the search's fixed settings."""
    p = {**TUTORIAL, **params}
    schedule = p["tau_schedule"]
    warmup = p.get("tau_warmup_frac", 0.0) * settings["epochs"] if schedule != "constant" else 0.0
    start = p["tau"] * p.get("tau_start_ratio", 1e-2) if schedule == "exponential" else 0.0
    prior = {k: p[k] for k in ("n_components", "zero_alpha", "zero_beta", "alpha", "beta", "learn_pi0")}
    if p["learn_pi0"]:
        prior.update(pi0_a=float(p.get("pi0_a", 1.0)), pi0_b=float(p.get("pi0_b", 1.0)))
    budget = settings.get("budget", True)
    rcfg = retrain_config("tutorial", epochs=settings["epochs"], batch_size=settings["batch_size"],
                          budget=budget, max_error_increase=float(settings.get("max_error_increase", 0.3)),
                          seed=settings["seed"], tau=p["tau"], tau_schedule=schedule, tau_start=start,
                          tau_warmup_epochs=warmup, pi0=1.0 - p["one_minus_pi0"],
                          **{k: p[k] for k in ("lr_weights", "lr_means", "lr_log_precisions",
                                               "lr_mixing")}, **prior)
    qcfg = QuantizeConfig(p["merge_threshold"], finetune_epochs=QuantizeConfig.finetune_epochs if budget else 0)
    qcfg.validate()
    return rcfg, qcfg

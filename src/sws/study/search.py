"""Hyper-parameter search with Optuna: validation error against compression rate (issue 6).

The paper tuned its hyper-parameters with Bayesian optimisation (section 6.1):
the four learning rates, the number of components, tau, the Gamma
hyper-priors of the zero and the other components and the Beta prior on pi0.
``run_search`` does the same with Optuna's multi-objective TPE sampler, over
``SPACE`` plus the tau schedule and the merge threshold, with two objectives:
the post-processed net's error on a validation split held out from the
training images (never the test set), and the compression rate from the bytes
of the ``.sws`` file each trial writes.  A search folder::

    OUT/search.json          fixed settings, search space, storage URL, study name
    OUT/study.db             the Optuna study (SQLite) unless --storage names another database
    OUT/study.journal        the study as Optuna's journal file, with --storage journal
    OUT/pretrained.*         the one pretrained net every trial starts from
    OUT/trials/NNNN/         trial NNNN's run folder: retrained, quantized, model.sws, trial.json
    OUT/pareto.png           validation error against CR (``sws search report``)

A search stops when the study holds ``n_trials`` complete trials, so running
it again resumes it: trials a killed worker left running are marked failed
and their parameters queued again.  Several processes (``n_workers``) or
machines (``--storage`` with a server database) share one study; processes
that share the search folder start trials under a file lock, so none is lost
or run twice.

Storage (``--storage``): any SQLAlchemy URL (``postgresql+psycopg://user@host/db``; a
plain ``postgresql://`` takes psycopg when psycopg2 is not installed), or Optuna's
journal file, safe on a shared (network) filesystem where SQLite is not:
``journal:PATH`` (recorded with PATH made absolute), or ``journal`` alone for
OUT/study.journal (the folder can move).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from sws.config import PretrainConfig
from sws.errors import ConfigError, RunDirError, SwsError
from sws.zoo.models import MODELS
from sws.runs.rundir import RunDir
from sws.storage import atomic_write
from sws.study.searchspace import SPACE, TUTORIAL, Param, configs, make_space, space_help, suggest
from sws.study.studydb import (DIRECTIONS, JOURNAL, JOURNAL_PREFIX, _storage, _study_settings, _url,  # noqa: F401
                               _with_driver, normalise_storage, open_study)

__all__ = ["SPACE", "Param", "make_space", "resolve_settings", "run_search", "open_study",
           "pareto_front", "format_report", "plot_pareto", "space_help"]


DEFAULTS = {"model": "tutorial-conv", "pretrain_epochs": 10, "train_subset": 0, "val_size": 10000,
            "epochs": 30, "batch_size": 256, "seed": 0, "ranges": {}, "choices": {}, "data": "",
            "budget": True, "max_error_increase": 0.3, "holdout_size": 0}
FIXED = ("model", "pretrain_epochs", "train_subset", "val_size", "epochs", "batch_size", "seed",
         "ranges", "choices", "data", "budget", "max_error_increase", "holdout_size")
LATER = ("holdout_size",)   # fixed settings added after the first studies: absent there means the default


def _fixed(settings: dict) -> dict:
    """The fixed settings a study records (a later one only where it is not the default)."""
    return {k: settings[k] for k in FIXED if k not in LATER or settings[k] != DEFAULTS[k]}


def resolve_settings(out: Path, given: dict) -> dict:
    """The search's fixed settings: those recorded in OUT/search.json, else the defaults, with
    ``given`` (options set on the command line) applied; a change to a recorded one is refused."""
    given = {k: v for k, v in given.items() if v not in (None, {}, ())}
    if "ranges" in given or "choices" in given:   # canonical form: floats, choice values
        space = make_space(given.get("ranges"), given.get("choices"))
        given.update({k: {n: _bounds(space[n]) if k == "ranges" else list(space[n].choices)
                          for n in given[k]} for k in ("ranges", "choices") if k in given})
    recorded = RunDir(out).read_json("search.json", None)
    if recorded is not None:
        for key, value in given.items():
            was = recorded.get(key, DEFAULTS[key] if key in LATER else None)   # LATER: absent is the default
            if key in FIXED and _canon(was) != _canon(value):
                raise ConfigError(f"{out} was started with {key} {was!r}, not "
                                  f"{value!r}; drop the option to resume it, or use a new folder")
        settings = {**DEFAULTS, **recorded, **{k: v for k, v in given.items() if k not in FIXED}}
    else:
        settings = {**DEFAULTS, **given}
    from sws.zoo.refs import is_ref
    if settings["model"] not in MODELS and not is_ref(settings["model"]):
        raise ConfigError(f"model {settings['model']!r} is neither a reference net ({', '.join(MODELS)}) "
                          "nor PKG.MODULE:FUNCTION returning an nn.Module")
    if settings["data"] and not is_ref(settings["data"]):
        raise ConfigError(f"data {settings['data']!r}: expected PKG.MODULE:FUNCTION returning (train, val, test)")
    if settings["data"] and "val_size" not in given and recorded is None:
        settings["val_size"] = 0            # a user's data function supplies its own validation set
    for key in ("pretrain_epochs", "epochs", "batch_size") + (() if settings["data"] else ("val_size",)):
        if not (isinstance(settings[key], int) and settings[key] > 0):
            raise ConfigError(f"{key} must be a positive integer, got {settings[key]!r} (the search "
                              "scores trials on a validation split, so val_size must be > 0)")
    if settings["train_subset"] < 0:
        raise ConfigError("train_subset must be >= 0")
    if not (isinstance(settings["holdout_size"], int) and settings["holdout_size"] >= 0):
        raise ConfigError(f"holdout_size must be an integer >= 0, got {settings['holdout_size']!r}")
    make_space(settings["ranges"], settings["choices"])
    return settings


def _bounds(p: Param) -> list:
    return [int(p.low), int(p.high)] if p.integer else [p.low, p.high]


def _canon(v):
    return json.loads(json.dumps(v))


# ---- the study: sws.study.studydb -----------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _lock(out: Path):
    """An exclusive lock among the processes that share the search folder."""
    with open(out / ".search.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeue(study, trial):
    """Queue a retry of ``trial``: the parameters it had drawn, plus those it was queued with and
    had not drawn yet (a trial stopped while sampling), its baseline mark, and which it repeats
    (the first trial of a chain of retries, each stopped in turn)."""
    frozen = trial if hasattr(trial, "system_attrs") else study.get_trials(deepcopy=False)[trial.number]
    params = {**frozen.system_attrs.get("fixed_params", {}), **frozen.params}
    attrs = {"retry_of": frozen.user_attrs.get("retry_of", trial.number)}   # a retry of a retry repeats the first
    if frozen.user_attrs.get("baseline"):
        attrs["baseline"] = frozen.user_attrs["baseline"]
    study.enqueue_trial(params, user_attrs=attrs)


def _requeue_dead(study, host: str):
    """Trials left running by a dead process on this host: mark them failed, queue their params."""
    from optuna.trial import TrialState
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker") or {}
        if w.get("host") == host and not _alive(w.get("pid", -1)):
            _requeue(study, t)
            study.tell(t.number, state=TrialState.FAIL)


def _val_error(sws_path: Path, val, model_ref: str) -> float:
    """Error of the network in the ``.sws`` file on the validation split."""
    from sws.method.evaluate import evaluate
    from sws.method.files import load
    from sws.zoo.refs import resolve_model
    model = load(sws_path) if model_ref in MODELS else load(sws_path, model=resolve_model(model_ref))
    return evaluate(model, val)["error"]


def _run_trial(trial, out: Path, settings: dict, space: dict, pretrained, val, data_dir) -> tuple:
    from sws.runs.stages import compress_run
    from sws.format.stats import file_stats
    from sws.runs.stages import run_quantize, run_retrain
    t0 = time.perf_counter()
    params = suggest(trial, space)
    rcfg, qcfg = configs(params, settings)
    run = RunDir.create(out / "trials" / f"{trial.number:04d}", force=True)
    run.save("pretrained", *pretrained)
    run.update_json("config.json", "search", {"trial": trial.number, "params": params,
                                              "retrain": dataclasses.asdict(rcfg),
                                              "quantize": dataclasses.asdict(qcfg)})
    run_retrain(run, rcfg, data_dir, quiet=True)
    q = run_quantize(run, qcfg, data_dir)
    sws_path = run.path / "model.sws"
    compress_run(run.path, sws_path)
    total = file_stats(sws_path.read_bytes())["total"]
    result = {"val_error": _val_error(sws_path, val, settings["model"]), "cr": total["cr_file"],
              "file_bytes": total["file_bytes"], "nonzero_share": q["nonzero_share"],
              "distinct_values": q["distinct_values"],
              "test_error": q.get("test_error"),   # recorded for the report only; never an objective
              **({"holdout_error": q["holdout_error"]} if "holdout_error" in q else {}),   # the same
              "sws": str(sws_path.relative_to(out)), "seconds": time.perf_counter() - t0}
    run.write_json("trial.json", {"trial": trial.number, "params": params, **result})
    for key, value in result.items():
        trial.set_user_attr(key, value)
    return result["val_error"], result["cr"]


def _interrupted(e: BaseException | None) -> bool:
    """Whether ``e`` comes from SIGINT/SIGTERM: a KeyboardInterrupt or a stop with a signal number,
    or an error raised while handling one (Optuna's journal lock, interrupted between renaming and
    removing its lock file, raises FileNotFoundError from its clean-up instead)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt) or getattr(e, "signum", None) is not None:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _work(out: Path, n_trials: int, index: int, data_dir, quiet: bool, sampler_seed: int) -> int:
    """One worker: start trials until the study holds ``n_trials`` complete or running ones."""
    from optuna.trial import TrialState
    from sws.runs.stages import load_data
    study = open_study(out, sampler_seed=sampler_seed)
    settings = RunDir(out).read_json("search.json", {})
    space = make_space(settings["ranges"], settings["choices"])
    pretrained = RunDir(out).load("pretrained")
    _, val, _ = load_data(pretrained[1]["data"], data_dir)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    done, failures = 0, 0
    while True:
        with _lock(out):
            _requeue_dead(study, me["host"])
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if states.count(TrialState.COMPLETE) + states.count(TrialState.RUNNING) >= n_trials:
                return done
            trial = study.ask()
            trial.set_user_attr("worker", me)
        try:
            values = _run_trial(trial, out, settings, space, pretrained, val, data_dir)
        except BaseException as e:
            if _interrupted(e):
                _requeue(study, trial)
                study.tell(trial, state=TrialState.FAIL)
                raise KeyboardInterrupt from None
            if not isinstance(e, (SwsError, RuntimeError, ValueError, ArithmeticError)):
                trial.set_user_attr("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                                    " (not an outcome of the settings: the worker stops)")
                study.tell(trial, state=TrialState.FAIL)
                raise
            trial.set_user_attr("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            study.tell(trial, state=TrialState.FAIL)
            # training that diverges is an outcome of the settings; other errors in a row are not
            failures = 0 if type(e).__name__ == "DivergenceError" else failures + 1
            if not quiet:
                print(f"trial {trial.number}: failed ({trial.user_attrs['error']})", flush=True)
            if failures >= 5:
                raise SwsError(f"5 trials in a row failed; the last: {trial.user_attrs['error']}")
            continue
        study.tell(trial, values)
        done, failures = done + 1, 0
        if not quiet:
            print(f"trial {trial.number}: validation error {100 * values[0]:.2f}%, CR {values[1]:.1f} "
                  f"({trial.user_attrs['seconds']:.0f} s, worker {me['pid']})", flush=True)


def _spawned(out, n_trials, index, data_dir, quiet, sampler_seed):
    try:
        _work(Path(out), n_trials, index, data_dir, quiet, sampler_seed)
    except KeyboardInterrupt:
        sys.exit(130)
    except SwsError as e:
        print(f"error: worker {index}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def run_search(out: str | Path, given: dict, n_trials: int, n_workers: int = 1,
               storage: str | None = None, study_name: str | None = None, data_dir=None,
               quiet: bool = False, baseline: bool = True) -> dict:
    """Start or resume the search in ``out`` until its study holds ``n_trials`` complete trials.

    Args:
      given: fixed settings set by the caller (keys of ``DEFAULTS``); on resume they must match.
      storage: SQLAlchemy URL of the study [sqlite:///OUT/study.db], "journal:PATH" (Optuna's
        journal file, for a shared filesystem) or "journal" (OUT/study.journal); recorded in
        search.json.
      study_name: the study's name in the storage [OUT's folder name].
      baseline: queue the tutorial's settings (``TUTORIAL``) as a new study's first trial.

    Returns:
      counts of the study's trials by state, and this call's wall time in seconds.
    """
    from sws.runs.stages import run_pretrain
    if n_trials < 1 or n_workers < 1:
        raise ConfigError(f"trials and n_workers must be >= 1, got {n_trials} and {n_workers}")
    out = Path(out)
    if out.exists() and not (out / "search.json").is_file() and any(
            p.name not in ("pretrained.safetensors", "pretrained.json") for p in out.iterdir()):
        raise RunDirError(f"{out}: exists and is not a search folder (only a copy of another "
                          "search's pretrained.* may be there); choose another folder")
    t0 = time.time()
    resumed = (out / "search.json").is_file()
    storage = normalise_storage(storage)
    if storage and not resumed:   # joining a study begun elsewhere
        given = {**_study_settings(_url(out, {"storage": storage}), study_name or out.resolve().name), **given}
    settings = resolve_settings(out, given)
    if resumed:
        for key, value, was in (("storage", storage and _url(out, {"storage": storage}), _url(out, settings)),
                                ("study_name", study_name, settings["study_name"])):
            if value and value != was:
                raise ConfigError(f"{out} was started with {key} {was!r}, not {value!r}")
    else:
        settings["storage"] = storage   # None: OUT/study.db ('journal': OUT/study.journal), so the folder can move
        settings["study_name"] = study_name or out.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        atomic_write(out / "search.json", (json.dumps(settings, indent=2) + "\n").encode())
        run = RunDir(out)
        if not run.has("pretrained"):
            run_pretrain(run, PretrainConfig(model=settings["model"], data=settings["data"],
                                             epochs=settings["pretrain_epochs"],
                                             batch_size=settings["batch_size"], seed=settings["seed"],
                                             train_subset=settings["train_subset"],
                                             val_size=settings["val_size"],
                                             holdout_size=settings["holdout_size"]), data_dir, quiet)
        sha = _sha256(out / "pretrained.safetensors")
        study = open_study(out, settings)
        attrs = study.user_attrs
        if "pretrained_sha256" not in attrs:
            study.set_user_attr("settings", _fixed(settings))
            study.set_user_attr("pretrained_sha256", sha)
        elif attrs["pretrained_sha256"] != sha or _canon(attrs["settings"]) != _canon(
                _fixed(settings)):
            raise ConfigError(f"study {settings['study_name']!r} was started with other settings or "
                              "another pretrained net; copy that search's search.json and pretrained.* "
                              "into this folder, or choose another --study-name")
        if baseline and not study.trials:
            space = make_space(settings["ranges"], settings["choices"])
            if all(_inside(space[k], v) for k, v in TUTORIAL.items()):
                study.enqueue_trial(TUTORIAL, user_attrs={"baseline": "tutorial"})
            elif not quiet:
                print("the tutorial's settings lie outside the search space: no baseline trial")
        n_before = len(study.trials)
    seed = settings["seed"] * 1_000_003 + n_before * 101
    try:
        if n_workers == 1:
            _work(out, n_trials, 0, data_dir, quiet, seed)
        else:
            import multiprocessing as mp
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_spawned, args=(str(out), n_trials, i, data_dir, quiet, seed + i))
                     for i in range(n_workers)]
            for p in procs:
                p.start()
            try:
                for p in procs:
                    p.join()
            except KeyboardInterrupt:   # the workers got the signal too: let them record it
                for p in procs:
                    p.join()
            bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode]
            if any(code == 130 for _, code in bad):
                raise KeyboardInterrupt
            if bad:
                raise SwsError(f"search workers failed (worker, exit code): {bad}")
    finally:
        sessions = RunDir(out).read_json("metrics.json", {}).get("search_sessions", [])
        RunDir(out).update_json("metrics.json", "search_sessions", sessions + [
            {"started": t0, "wall_seconds": time.time() - t0, "n_workers": n_workers,
             "trials_requested": n_trials}])
    counts = {}
    for t in open_study(out).get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    counts["wall_seconds"] = time.time() - t0
    return counts


def _inside(p: Param, v) -> bool:
    return v in p.choices if p.choices else p.low <= v <= p.high


from sws.study.pareto import format_report, pareto_front, plot_pareto  # noqa: E402  (re-exported)

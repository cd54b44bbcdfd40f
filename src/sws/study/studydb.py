"""Where a search's Optuna study lives: SQLite in the search folder, any SQLAlchemy URL
(PostgreSQL through psycopg), or Optuna's journal file for a shared filesystem."""

from __future__ import annotations

import warnings
from pathlib import Path

from sws.errors import ConfigError, RunDirError
from sws.runs.rundir import RunDir

__all__ = ["DIRECTIONS", "JOURNAL", "JOURNAL_PREFIX", "normalise_storage", "open_study"]

DIRECTIONS = ["minimize", "maximize"]   # validation error, compression rate

JOURNAL = "journal"            # --storage journal: OUT/study.journal
JOURNAL_PREFIX = "journal:"    # --storage journal:PATH: Optuna's JournalFileBackend


def normalise_storage(storage: str | None) -> str | None:
    """The storage as recorded: a journal path made absolute (relative to the current folder),
    a URL as given."""
    if storage and storage.startswith(JOURNAL_PREFIX):
        path = storage[len(JOURNAL_PREFIX):]
        if path.startswith("//"):      # journal:///abs/path, URL style
            path = path[2:]
        if not path:
            raise ConfigError("storage journal:PATH needs a file path (or give 'journal' for OUT/study.journal)")
        return JOURNAL_PREFIX + str(Path(path).expanduser().resolve())
    return storage


def _with_driver(url: str) -> str:
    """``postgresql://`` (SQLAlchemy's default driver psycopg2) as ``postgresql+psycopg://`` when
    only psycopg (version 3) is installed; ``postgres://`` as ``postgresql://``."""
    import importlib.util
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if (url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None
            and importlib.util.find_spec("psycopg") is not None):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def _storage(url: str):
    import optuna
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend
        path = normalise_storage(url)[len(JOURNAL_PREFIX):]
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        except OSError as e:
            raise ConfigError(f"storage {url}: cannot open ({e.strerror or e})") from None
    url = _with_driver(url)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:   # SQLAlchemy's errors: bad URL, missing driver, unreachable server
        raise ConfigError(f"storage {url}: cannot open ({str(e).splitlines()[0]})") from None


def _quiet_optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _url(out: Path, settings: dict) -> str:
    """The study's storage URL; none recorded: OUT/study.db, wherever the folder now is
    ('journal': OUT/study.journal)."""
    storage = settings.get("storage")
    if storage == JOURNAL:
        return f"{JOURNAL_PREFIX}{(Path(out) / 'study.journal').resolve()}"
    return storage or f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def open_study(out: Path, settings: dict | None = None, sampler_seed: int | None = None):
    """The search folder's Optuna study (created when ``settings`` are given and it is missing)."""
    import optuna
    _quiet_optuna()
    recorded = RunDir(out).read_json("search.json", None)
    if recorded is None and settings is None:
        raise RunDirError(f"{out}: not a search folder (no search.json); run 'sws search run' first")
    s = settings or recorded
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, multivariate=True, group=True,
                                         constant_liar=True)
    url = _url(out, s)
    storage = _storage(url)
    if settings is None:
        try:
            return optuna.load_study(study_name=s["study_name"], storage=storage, sampler=sampler)
        except KeyError:
            raise RunDirError(f"{url}: holds no study {s['study_name']!r}") from None
    study = optuna.create_study(storage=storage, study_name=s["study_name"], directions=DIRECTIONS,
                                sampler=sampler, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != DIRECTIONS:
        raise ConfigError(f"study {s['study_name']!r} in {url} is not an sws search "
                          "(other objectives); choose another --study-name")
    return study


def _study_settings(url: str, name: str) -> dict:
    """The fixed settings a study in ``url`` was started with ({} when there is no such study)."""
    import optuna
    _quiet_optuna()
    if url.startswith(JOURNAL_PREFIX) and not Path(url[len(JOURNAL_PREFIX):]).is_file():
        return {}      # no journal yet: no study (and no file created before the folder exists)
    try:
        return dict(optuna.load_study(study_name=name, storage=_storage(url)).user_attrs.get("settings", {}))
    except KeyError:
        return {}



"""sws search on a real database server and on Optuna's journal file: two worker processes share
one study, one worker is interrupted mid-trial, the search resumes, and no trial is lost or run twice.

The PostgreSQL server is started by the test itself: its own data folder and socket under a
temporary directory (no TCP port), run as the ``postgres`` system user when the test runs as root
(the server refuses root), stopped and removed afterwards.  Skipped, with the reason, where the
server binaries, that user or psycopg are missing.
"""

import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from sws.errors import ConfigError  # noqa: E402
from sws.study.search import _storage, _url, _with_driver, normalise_storage  # noqa: E402
from sws.study.searchspace import TUTORIAL  # noqa: E402

TINY = ["--model", "lenet-300-100", "--train-subset", "600", "--val-size", "200", "--pretrain-epochs", "1",
        "--epochs", "1", "--quiet"]
N_TRIALS = 3


def _pg_bin() -> Path | None:
    """The folder of initdb and pg_ctl: $SWS_PG_BIN, Debian's /usr/lib/postgresql/N/bin, or PATH."""
    candidates = [os.environ.get("SWS_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                         if Path(p).parent.name.isdigit() else 0, reverse=True)
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of the test's own; yields its SQLAlchemy URL (psycopg, Unix socket)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'sws[postgres]')")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in $SWS_PG_BIN, "
                    "/usr/lib/postgresql/*/bin or PATH (Debian: apt-get install postgresql)")
    prefix = []
    if os.geteuid() == 0:            # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' system user to run the server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and runuser (util-linux) is missing to start the server as postgres")
        prefix = [runuser, "-u", "postgres", "--"]
    # under /tmp when root: $TMPDIR may be a folder the postgres user cannot enter
    base = Path(tempfile.mkdtemp(prefix="sws-pg-", dir="/tmp" if prefix and os.path.isdir("/tmp") else None))
    os.chmod(base, 0o755)
    sock = base / "sock"
    sock.mkdir()
    if prefix:
        for p in (base, sock):
            os.chown(p, user.pw_uid, user.pw_gid)

    def pg(*args, check=True):
        return subprocess.run(prefix + [str(a) for a in args], cwd=base, capture_output=True, text=True,
                              timeout=120, check=check)

    data, port = base / "data", 5432 + os.getpid() % 1000   # the port only names the socket file
    try:
        pg(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        pg(bin_dir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-t", "60", "-o",
           f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
           "-c full_page_writes=off", "start")
    except subprocess.CalledProcessError as e:
        log = (base / "server.log").read_text() if (base / "server.log").is_file() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"cannot start PostgreSQL: {e.stderr or e.stdout}\n{log}")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}"
    finally:
        pg(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def _search(out, storage, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sws.cli", "search", "run", str(out), "--trials", str(N_TRIALS),
                             "--n-workers", "2", "--storage", storage, *TINY, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True,     # its workers can be stopped with it, see _stop
                            preexec_fn=_default_sigint)


def _default_sigint():
    """SIGINT as a terminal gives it: a suite started in the background (``cmd &``) inherits it
    ignored, and so would the search and its workers, which then rightly never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(proc):
    """Kill a search that is still running, its workers with it (one process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _load(url):
    try:
        return optuna.load_study(study_name="search", storage=_storage(url))
    except KeyError:
        return None


def _interrupt_one_worker(proc, url, sig):
    """Wait for a trial in progress, freeze its worker, check the trial is still running, then
    send ``sig`` to that worker alone.  Returns the trial's number."""
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        study = _load(url)
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if "worker" in t.user_attrs] if study else []
        if running:
            t = running[0]
            pid = t.user_attrs["worker"]["pid"]
            os.kill(pid, signal.SIGSTOP)          # nothing changes while we look
            if _load(url).trials[t.number].state == TrialState.RUNNING:
                os.kill(pid, sig)
                os.kill(pid, signal.SIGCONT)
                return t.number
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    pytest.fail("no trial started within 4 minutes")


def _check_study(out, url, interrupted: int):
    study = _load(url)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # the interrupted trial failed and ran again exactly once, to completion, with the parameters
    # it had drawn and those it was queued with (the tutorial's, for the baseline trial)
    stopped = trials[interrupted]
    assert stopped.state == TrialState.FAIL
    retries = [t for t in complete if t.user_attrs.get("retry_of") == interrupted]
    seen = [(t.number, t.state.name, t.user_attrs.get("retry_of"), t.user_attrs.get("error")) for t in trials]
    assert len(retries) == 1, f"interrupted trial {interrupted}; trials (number, state, retry_of): {seen}"
    retry = retries[0]
    wanted = {**stopped.system_attrs.get("fixed_params", {}), **stopped.params}
    assert all(retry.params[k] == v for k, v in wanted.items() if k in retry.params)
    assert set(stopped.params) <= set(retry.params)
    assert retry.user_attrs.get("baseline") == stopped.user_attrs.get("baseline")
    if stopped.user_attrs.get("baseline"):
        assert retry.params["tau"] == TUTORIAL["tau"] and retry.params["n_components"] == TUTORIAL["n_components"]
    # every complete trial ran once, in its own folder, with parameters no other trial ran
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == N_TRIALS
    for t in complete:
        record = json.loads((out / "trials" / f"{t.number:04d}" / "trial.json").read_text())
        assert record["trial"] == t.number and record["params"] == t.params
        assert t.values == [record["val_error"], record["cr"]]
    return study


def _run_interrupt_resume(tmp_path, mnist_dir, storage, url, sig, monkeypatch):
    monkeypatch.setenv("SWS_DATA_DIR", str(mnist_dir))
    out = tmp_path / "search"
    proc = _search(out, storage)
    try:
        interrupted = _interrupt_one_worker(proc, url, sig)
        first, _ = proc.communicate(timeout=300)
        assert proc.returncode != 0, first      # a worker was interrupted: the session says so
        proc = _search(out, storage)            # resume
        second, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, second
    finally:
        _stop(proc)
    assert json.loads((out / "search.json").read_text())["storage"] == storage
    return _check_study(out, url, interrupted), first, second


@pytest.mark.slow
def test_postgres_two_workers_one_killed_then_resumed(tmp_path, mnist_dir, postgres, monkeypatch):
    study, first, second = _run_interrupt_resume(tmp_path, mnist_dir, postgres, postgres, signal.SIGKILL,
                                                 monkeypatch)
    assert "search workers failed" in first
    assert "Pareto front" in second
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials if "worker" in t.user_attrs}) >= 2


@pytest.mark.slow
def test_journal_two_workers_one_interrupted_then_resumed(tmp_path, mnist_dir, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    storage = f"journal:{shared / 'study.log'}"
    study, first, second = _run_interrupt_resume(tmp_path, mnist_dir, storage, storage, signal.SIGINT, monkeypatch)
    assert "interrupted" in first
    assert (shared / "study.log").stat().st_size > 0 and not (tmp_path / "search" / "study.db").exists()


def test_storage_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalise_storage("journal:rel/s.log") == f"journal:{tmp_path / 'rel' / 's.log'}"
    assert normalise_storage("journal:///abs/s.log") == "journal:/abs/s.log"
    assert normalise_storage("sqlite:///x.db") == "sqlite:///x.db" and normalise_storage(None) is None
    with pytest.raises(ConfigError, match="needs a file path"):
        normalise_storage("journal:")
    # 'journal' alone: the search folder's own journal file, wherever the folder is
    assert _url(tmp_path / "s", {"storage": "journal"}) == f"journal:{tmp_path / 's' / 'study.journal'}"
    assert _url(tmp_path / "s", {"storage": None}) == f"sqlite:///{tmp_path / 's' / 'study.db'}"
    assert _with_driver("postgres://u@h/db").startswith("postgresql")
    if pytest.importorskip("importlib.util").find_spec("psycopg2") is None:
        if pytest.importorskip("importlib.util").find_spec("psycopg") is not None:
            assert _with_driver("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(ConfigError, match="cannot open"):
        _storage(f"journal:{tmp_path / 'missing' / 'dir' / 's.log'}")


def test_unreachable_server_is_one_line(tmp_path):
    pytest.importorskip("psycopg")
    with pytest.raises(ConfigError, match="cannot open"):
        _storage(f"postgresql+psycopg://nobody@/db?host={tmp_path}&port=1&connect_timeout=2")

"""sws search: a tiny study completes and resumes, two workers share one SQLite study,
trials are scored on the validation split, bad ranges are refused in one line."""

import json
import shutil
import socket
import subprocess

import pytest

pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from sws.cli import main  # noqa: E402
from sws.errors import ConfigError  # noqa: E402
from sws.study.search import open_study, run_search  # noqa: E402
from sws.study.searchspace import make_space, suggest  # noqa: E402

TINY = {"model": "lenet-300-100", "train_subset": 1000, "val_size": 500, "pretrain_epochs": 1,
        "epochs": 1}


def call(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def by_state(study, state):
    return [t for t in study.get_trials(deepcopy=False) if t.state == state]


def check_trials(out, study):
    """Every complete trial has its own run folder with metrics and a .sws file."""
    complete = by_state(study, TrialState.COMPLETE)
    numbers = [t.number for t in complete]
    assert len(set(numbers)) == len(numbers)
    for t in complete:
        folder = out / "trials" / f"{t.number:04d}"
        record = json.loads((folder / "trial.json").read_text())
        assert record["trial"] == t.number and record["params"] == t.params
        assert (folder / "model.sws").stat().st_size == record["file_bytes"]
        assert t.values == [record["val_error"], record["cr"]]
        assert t.user_attrs["sws"] == f"trials/{t.number:04d}/model.sws"
    return complete


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.mark.slow
def test_tiny_study_completes_resumes_and_reports(tmp_path, mnist_dir, capsys):
    out = tmp_path / "search"
    counts = run_search(out, TINY, n_trials=2, data_dir=mnist_dir, quiet=True)
    assert counts["complete"] == 2
    study = open_study(out)
    first = check_trials(out, study)
    assert first[0].user_attrs["baseline"] == "tutorial" and first[0].params["tau"] == 0.003
    pretrained_mtime = (out / "pretrained.safetensors").stat().st_mtime_ns

    # the objective is the .sws file's error on the validation split, not on the test set
    import sws
    from sws.runs.stages import load_data
    from sws.runs.rundir import RunDir
    _, val, test = load_data(RunDir(out).load("pretrained")[1]["data"], mnist_dir)
    model = sws.load(out / first[1].user_attrs["sws"])
    assert first[1].values[0] == pytest.approx(sws.evaluate(model, val)["error"])
    assert len(val) == 500

    # a worker killed mid-trial leaves a running trial behind; resuming fails it and reruns its params
    killed = study.ask()
    params = suggest(killed, make_space())
    killed.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead_pid()})
    counts = run_search(out, {}, n_trials=3, data_dir=mnist_dir, quiet=True)
    assert counts == {"complete": 3, "fail": 1, "wall_seconds": counts["wall_seconds"]}
    study = open_study(out)
    assert study.trials[killed.number].state == TrialState.FAIL
    retry = [t for t in check_trials(out, study) if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == params
    assert (out / "pretrained.safetensors").stat().st_mtime_ns == pretrained_mtime
    sessions = json.loads((out / "metrics.json").read_text())["search_sessions"]
    assert len(sessions) == 2 and all(s["wall_seconds"] > 0 for s in sessions)

    # a study holding its trials already runs none; a changed fixed setting is refused
    assert run_search(out, {}, n_trials=3, data_dir=mnist_dir, quiet=True)["complete"] == 3
    with pytest.raises(ConfigError, match="was started with epochs 1"):
        run_search(out, {"epochs": 2}, n_trials=4, data_dir=mnist_dir, quiet=True)

    # another machine joins through the storage URL with a copy of the pretrained net
    other = tmp_path / "other"
    other.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(out / f"pretrained{suffix}", other / f"pretrained{suffix}")
    url = f"sqlite:///{out / 'study.db'}"
    n_before = len(study.trials)
    counts = run_search(other, {}, n_trials=4, storage=url, study_name="search", data_dir=mnist_dir,
                        quiet=True)
    assert counts["complete"] == 4
    assert [p.name for p in (other / "trials").iterdir()] == [f"{n_before:04d}"]

    code, text, _ = call(capsys, "search", "report", str(out))
    assert code == 0
    assert "Pareto front" in text and "trials/0000/model.sws" in text and "tutorial" in text
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path, mnist_dir):
    out = tmp_path / "search"
    counts = run_search(out, TINY, n_trials=4, n_workers=2, data_dir=mnist_dir, quiet=True)
    study = open_study(out)
    complete = check_trials(out, study)
    assert counts["complete"] == len(complete) == 4
    assert not by_state(study, TrialState.RUNNING) and not by_state(study, TrialState.WAITING)
    # every trial ran once, in one folder, with its own parameters; both workers took part
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{t.number:04d}" for t in study.trials]
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 4
    assert len({t.user_attrs["worker"]["pid"] for t in complete}) == 2
    assert (out / "study.db").is_file() and json.loads((out / "search.json").read_text())["storage"] is None


@pytest.mark.parametrize("args, message", [
    (["--range", "tau", "1e-1", "1e-3"], "search range for tau: low 0.1 must be below high 0.001"),
    (["--range", "tau", "0", "1e-2"], "search range for tau is log-scale: bounds must be > 0"),
    (["--range", "lr_means", "-1", "1e-2"], "bounds must be > 0, got -1"),
    (["--range", "bogus", "1", "2"], "unknown search parameter 'bogus'; known: lr_weights"),
    (["--range", "n_components", "4.5", "8"], "'4.5' is not a finite integer"),
    (["--range", "n_components", "1", "8"], "leaves its domain 2..256"),
    (["--range", "tau", "x", "1"], "'x' is not a number"),
    (["--range", "one_minus_pi0", "0.01", "0.9"], "leaves its domain"),
    (["--range", "tau_schedule", "1", "2"], "takes choices, not a range"),
    (["--choice", "tau_schedule", "cosine"], "'cosine' is not one of constant, linear, exponential"),
    (["--choice", "tau", "1,2"], "takes a range, not choices"),
    (["--trials", "0"], "trials and n_workers must be >= 1"),
    (["--val-size", "0"], "val_size must be a positive integer"),
])
def test_invalid_ranges_exit_2_with_one_line(capsys, tmp_path, args, message):
    argv = ["search", "run", str(tmp_path / "s"), *(["--trials", "3"] if "--trials" not in args else []), *args]
    code, out, err = call(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "s").exists()


def test_space_rejects_and_keeps(tmp_path):
    space = make_space({"tau": ["1e-3", "1e-2"], "n_components": [8, 20]}, {"learn_pi0": ["true"]})
    assert (space["tau"].low, space["tau"].high, space["tau"].log) == (1e-3, 1e-2, True)
    assert space["learn_pi0"].choices == (True,)
    assert make_space()["merge_threshold"].low == 1e-4
    with pytest.raises(ConfigError):
        make_space({"tau": [1e-2]})


@pytest.mark.parametrize("command", [["search", "--help"], ["search", "run", "--help"],
                                     ["search", "report", "--help"]])
def test_search_help(capsys, command):
    code, out, _ = call(capsys, *command)
    assert code == 0 and "Usage:" in out
    if command[1:2] == ["run"]:
        assert "tau_schedule" in out and "merge_threshold" in out


def test_report_of_missing_folder_is_one_line(capsys, tmp_path):
    code, _, err = call(capsys, "search", "report", str(tmp_path / "nothing"))
    assert code == 2 and err.count("\n") == 1 and "not a search folder" in err


def test_an_error_raised_while_a_signal_unwinds_counts_as_the_interruption():
    """Optuna's journal lock, interrupted between renaming and removing its lock file, raises
    FileNotFoundError from its clean-up: the trial was interrupted all the same (and is queued
    again), it did not fail on its settings."""
    from sws.errors import TrainingInterrupted
    from sws.study.search import _interrupted

    def unwinding(first):
        try:
            try:
                raise first
            finally:
                raise FileNotFoundError("study.log.lock.rename")
        except FileNotFoundError as e:
            return e
    assert _interrupted(unwinding(KeyboardInterrupt()))
    assert _interrupted(unwinding(TrainingInterrupted("stopped", 15)))
    assert not _interrupted(unwinding(ValueError("a bad setting")))
    assert not _interrupted(FileNotFoundError("no such file"))


def test_a_study_with_a_holdout_scores_each_trial_on_it(tmp_path, mnist_dir):
    from sws.errors import ConfigError
    from sws.study.search import format_report
    out = tmp_path / "search"
    counts = run_search(out, {**TINY, "holdout_size": 300}, n_trials=1, data_dir=mnist_dir, quiet=True)
    assert counts["complete"] == 1
    study = open_study(out)
    trial = study.trials[0]
    assert 0 <= trial.user_attrs["holdout_error"] <= 1
    assert "holdout %" in format_report(study, out) and "holdout and test error shown only" in \
        format_report(study, out)
    with pytest.raises(ConfigError, match="was started with holdout_size 300, not 0"):
        run_search(out, {"holdout_size": 0}, n_trials=1, data_dir=mnist_dir, quiet=True)
    # a study recorded before holdouts existed (no holdout_size among its settings) resumes
    plain = tmp_path / "plain"
    run_search(plain, TINY, n_trials=1, data_dir=mnist_dir, quiet=True)
    assert "holdout_size" not in open_study(plain).user_attrs["settings"]
    recorded = json.loads((plain / "search.json").read_text())
    del recorded["holdout_size"]                                   # as an older version wrote it
    (plain / "search.json").write_text(json.dumps(recorded))
    assert run_search(plain, {"holdout_size": 0}, n_trials=1, data_dir=mnist_dir, quiet=True)["complete"] == 1
    assert "holdout %" not in format_report(open_study(plain), plain)

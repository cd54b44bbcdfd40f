"""The command line: help, exit codes and one-line errors."""

import math
import subprocess
import sys

import pytest

from sws.cli import main

COMMANDS = ["pretrain", "retrain", "quantize", "evaluate", "run", "compress", "inspect", "report"]


def sws(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sws.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def call(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys, command):
    code, out, _ = call(capsys, command, "--help")
    assert code == 0 and "Usage:" in out and "--help" in out


@pytest.mark.parametrize("args, message", [
    (["--pi0", "1.5"], "pi0 must lie strictly between 0 and 1"),
    (["--pi0", "0"], "pi0 must lie strictly between 0 and 1"),
    (["--components", "1"], "n_components must be at least 2"),
    (["--tau", "-1"], "tau must be a finite number >= 0"),
    (["--epochs", "0"], "epochs must be a positive number"),
    (["--augment", "rotate:10"], "unknown transform 'rotate:10'"),
    (["--pretrain-augment", "shift:0"], "'shift' needs a whole number of pixels >= 1"),
    (["--holdout-size", "-3"], "holdout_size must be >= 0"),
])
def test_invalid_settings_exit_2_with_one_line(capsys, tmp_path, args, message):
    code, out, err = call(capsys, "run", "--model", "lenet-300-100", "--out", str(tmp_path / "r"), *args)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written for bad settings


def test_unknown_model_is_a_usage_error(capsys, tmp_path):
    code, _, err = call(capsys, "run", "--model", "resnet-9000", "--out", str(tmp_path / "r"))
    assert code == 2 and "resnet-9000" in err


def test_missing_run_folder(capsys, tmp_path):
    code, _, err = call(capsys, "quantize", str(tmp_path / "nope"))
    assert code == 2 and err.startswith("error:") and "no such run folder" in err


def test_retrain_needs_pretrained(capsys, tmp_path):
    (tmp_path / "r").mkdir()
    code, _, err = call(capsys, "retrain", str(tmp_path / "r"))
    assert code == 2 and "run 'sws pretrain' first" in err


def test_bad_data_dir(capsys, tmp_path):
    code, _, err = call(capsys, "pretrain", "--model", "lenet-300-100", "--out", str(tmp_path / "r"),
                        "--data-dir", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


def test_existing_run_folder_is_not_overwritten(capsys, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    code, _, err = call(capsys, "run", "--model", "lenet-300-100", "--out", str(run))
    assert code == 2 and "--force" in err
    assert (run / "precious.txt").read_text() == "keep me"


def test_console_script_entry_point(tmp_path):
    r = sws("--version")
    assert r.returncode == 0 and "version" in r.stdout
    r = sws("evaluate", str(tmp_path / "nothing.sws"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1


def test_report_warns_when_post_processing_wrecks_the_net(capsys):
    from sws.cli import _print_report
    m = {"layers": {}, "retrained_test_accuracy": 0.95, "test_accuracy": 0.098,
         "nonzero_share": 0.0, "distinct_values": 1, "components_before_merge": 16,
         "components_after_merge": 1}
    _print_report(m)
    err = capsys.readouterr().err
    assert err.startswith("warning: every weight was snapped to 0") and err.count("\n") == 1
    _print_report({**m, "test_accuracy": 0.94, "nonzero_share": 0.05})
    assert capsys.readouterr().err == ""


def test_cosine_schedules_reach_the_loops(capsys, tmp_path, mnist_dir):
    out = tmp_path / "r"
    code, _, err = call(capsys, "run", "--model", "lenet-300-100", "--out", str(out), "--data-dir",
                        str(mnist_dir), "--train-subset", "512", "--pretrain-epochs", "2", "--epochs", "2",
                        "--pretrain-lr-schedule", "cosine", "--lr-schedule", "cosine", "--no-budget", "--quiet")
    assert code == 0, err
    import json
    settings = json.loads((out / "config.json").read_text())["run"]["settings"]
    assert settings["pretrain"]["lr_schedule"] == settings["retrain"]["lr_schedule"] == "cosine"
    history = json.loads((out / "history.json").read_text())
    # 2 steps per epoch: the last steps ran at cos-annealed shares 0.5 (step 2 of 4) and 0.146
    for stage in ("pretrain", "retrain"):
        scales = [r["lr_scale"] for r in history if r["stage"] == stage]
        assert scales == pytest.approx([0.5 * (1 + math.cos(math.pi * 1 / 4)), 0.5 * (1 + math.cos(math.pi * 3 / 4))])


def test_bench_table1_runs_the_benchmark_script_from_the_checkout():
    r = sws("bench", "table1", "--help")
    assert r.returncode == 0 and "usage: table1" in r.stdout and "--pretrain-lr-schedule" in r.stdout
    r = sws("bench", "table1", "--models", "lenet-7")
    assert r.returncode == 2 and "invalid choice: 'lenet-7'" in r.stderr


def test_gamma_hyper_priors_from_the_cli(capsys, tmp_path, mnist_dir):
    out = tmp_path / "r"
    code, _, err = call(capsys, "run", "--model", "lenet-300-100", "--out", str(out), "--data-dir",
                        str(mnist_dir), "--train-subset", "512", "--pretrain-epochs", "1", "--epochs", "1",
                        "--alpha", "100", "--beta", "0.01", "--zero-alpha", "4000", "--zero-beta", "1.5",
                        "--no-budget", "--quiet")
    assert code == 0, err
    import json
    prior = json.loads((out / "config.json").read_text())["run"]["settings"]["retrain"]["prior"]
    assert (prior["alpha"], prior["beta"], prior["zero_alpha"], prior["zero_beta"]) == (100, 0.01, 4000, 1.5)
    code, _, err = call(capsys, "run", "--model", "lenet-300-100", "--out", str(tmp_path / "bad"), "--beta", "-1")
    assert code == 2 and "beta" in err


def test_holdout_is_scored_and_never_trained_on(capsys, tmp_path, mnist_dir):
    import json

    import torch

    from sws.runs.inputs import load_data, load_holdout
    from sws.runs.rundir import RunDir
    out = tmp_path / "r"
    code, printed, err = call(capsys, "run", "--model", "lenet-300-100", "--out", str(out), "--data-dir",
                              str(mnist_dir), "--train-subset", "1024", "--val-size", "200", "--holdout-size",
                              "300", "--pretrain-epochs", "1", "--epochs", "1", "--quiet")
    assert code in (0, 3), err
    assert "holdout error (no choice saw these images): post-processed" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("pretrained", "quantized"):
        assert 0 <= metrics[stage]["holdout_error"] <= 1 and "holdout_accuracy" in metrics[stage]
    data = json.loads((out / "config.json").read_text())["run"]["settings"]["pretrain"]
    assert data["holdout_size"] == 300
    recorded = RunDir.open(out).load("pretrained")[1]["data"]   # what every later stage loads
    train, val, _ = load_data(recorded, mnist_dir)
    holdout = load_holdout(recorded, mnist_dir)
    assert (len(train), len(val), len(holdout)) == (524, 200, 300)
    flat = {tuple(x.flatten().tolist()) for x in torch.cat([train.x, val.x])}
    assert not flat & {tuple(x.flatten().tolist()) for x in holdout.x}
    code, _, err = call(capsys, "evaluate", str(out), "--data-dir", str(mnist_dir))
    assert code == 0, err
    assert "holdout_error" in json.loads((out / "metrics.json").read_text())["evaluate"]["quantized"]
    code, _, err = call(capsys, "report", str(out), "--out", str(tmp_path / "r.html"))
    assert code == 0, err
    assert "holdout accuracy (images neither trained on nor used by any choice of the run)" in \
        (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("command", ["pretrain", "run"])
def test_a_split_too_large_leaves_no_run_folder(capsys, tmp_path, mnist_dir, command):
    out = tmp_path / "r"
    args = [command, "--model", "lenet-300-100", "--out", str(out), "--data-dir", str(mnist_dir),
            "--train-subset", "3000", "--val-size", "2500", "--holdout-size", "600", "--quiet"]
    code, _, err = call(capsys, *args)
    assert code == 2 and err.count("\n") == 1
    assert "val_size 2500 + holdout_size 600 leave no training data (3000 items)" in err
    assert not out.exists()              # the same command runs once mended, without --force
    mine = tmp_path / "mine"             # a folder that was there before is left as it was
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, _ = call(capsys, *[a if a != str(out) else str(mine) for a in args], "--force")
    assert code == 2 and (mine / "notes.txt").read_text() == "keep"

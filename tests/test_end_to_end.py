"""The whole pipeline on a small MNIST subset: retraining with the prior prunes and quantises.

Settings for a short run: 5,000 training images (so tau/N weighs 12x more
than on all 60,000), batch 64, 20 retraining epochs, and faster learning rates
for the weights (1e-3) and the mixture's precisions and proportions (1e-2) so
that the mixture settles within the run.  Thresholds are loose on purpose
(seeded run, small data) but fail on a broken prior, merge or assignment.
"""

import json

import pytest

from sws.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("e2e") / "run"
    with pytest.raises(SystemExit) as e:
        main(["run", "--model", "lenet-300-100", "--out", str(out), "--data-dir", str(mnist_dir),
              "--train-subset", "5000", "--batch-size", "64", "--pretrain-epochs", "3",
              "--epochs", "20", "--lr-weights", "1e-3", "--lr-log-precisions", "1e-2",
              "--lr-mixing", "1e-2", "--no-budget", "--quiet"])
    assert e.value.code == 0
    return out


def test_retraining_prunes_while_accuracy_holds(run_dir):
    q = json.loads((run_dir / "metrics.json").read_text())["quantized"]
    pre, re, post = q["pretrained_test_accuracy"], q["retrained_test_accuracy"], q["test_accuracy"]
    assert q["pretrained_nonzero_share"] == 1.0
    assert q["nonzero_share"] < 0.10                      # measured 4.9%
    assert re >= pre - 0.02                               # measured 91.4% -> 93.9%
    assert post >= pre - 0.08                             # measured 86.7%
    assert q["distinct_values"] <= 16 and q["codebook"][0] == 0.0


def test_run_folder_holds_history_metrics_and_command(run_dir):
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["epoch"] for r in history if r["stage"] == "pretrain"] == [1, 2, 3]
    retrain = [r for r in history if r["stage"] == "retrain"]
    assert len(retrain) == 20 and all("prior" in r and "complexity" in r for r in retrain)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run"]["command"].startswith("sws run --model lenet-300-100")
    assert config["run"]["settings"]["retrain"]["lr_weights"] == 1e-3
    for name in ("pretrained", "retrained", "quantized"):
        assert (run_dir / f"{name}.safetensors").is_file() and (run_dir / f"{name}.json").is_file()


def test_evaluate_reproduces_the_recorded_accuracy(run_dir, mnist_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(run_dir), "--data-dir", str(mnist_dir)])
    assert e.value.code == 0
    out = capsys.readouterr().out
    q = json.loads((run_dir / "metrics.json").read_text())["quantized"]
    assert f"accuracy {q['test_accuracy']:.4f}" in out.splitlines()[-1]

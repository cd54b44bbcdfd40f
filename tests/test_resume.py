"""Checkpoint and resume: a run stopped anywhere finishes with exactly the weights of one that was not.

Small runs (LeNet-300-100, 2,000 training images, 2-3 epochs) on the CPU with
deterministic algorithms; bit-identity is checked with ``torch.equal`` on every
tensor of the final checkpoint.
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from sws.config import PretrainConfig, retrain_config
from sws.errors import DivergenceError, TrainingInterrupted
from sws.runs.stages import run_pretrain, run_retrain
from sws.prior import GaussianMixturePrior
from sws.runs.checkpoint import load_checkpoint
from sws.runs.rundir import RunDir
import sws.method.loop as train_mod
from sws.method.batches import Source

DETERMINISTIC = ("import torch; torch.use_deterministic_algorithms(True); "
                 "from sws.cli import main; main()")
SMALL = dict(model="lenet-300-100", epochs=1, train_subset=2000, batch_size=256, seed=3)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, mnist_dir):
    """A run folder holding a small pretrained LeNet-300-100."""
    torch.set_num_threads(1)
    run = RunDir.create(tmp_path_factory.mktemp("resume") / "pre")
    run_pretrain(run, PretrainConfig(**SMALL), mnist_dir, quiet=True)
    return run.path


def _copy_run(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return RunDir(dst)


def _same(a, b, stage):
    ta, _ = load_checkpoint(a / stage)
    tb, _ = load_checkpoint(b / stage)
    assert ta.keys() == tb.keys()
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not diff, f"tensors differ after resuming: {diff}"


def _crash_after(monkeypatch, n, action):
    """Make the n-th minibatch (counted over the whole run) trigger ``action`` first."""
    real, count = Source.epoch, [0]

    def epoch(self, batch_size, generator=None, *args):
        for b in real(self, batch_size, generator, *args):
            if generator is not None:  # training batches only, not evaluation
                count[0] += 1
                if count[0] == n:
                    action()
            yield b
    monkeypatch.setattr(Source, "epoch", epoch)


class Crash(Exception):
    pass


def _raise():
    raise Crash


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_pretrain_crash_mid_epoch_resumes_bit_identical(tmp_path, mnist_dir, monkeypatch, schedule):
    cfg = PretrainConfig(**{**SMALL, "epochs": 2, "lr_schedule": schedule})
    ref = RunDir.create(tmp_path / "ref")
    run_pretrain(ref, cfg, mnist_dir, quiet=True)
    run = RunDir.create(tmp_path / "crash")
    _crash_after(monkeypatch, 12, _raise)  # epoch 2 of 8 batches each, step 4
    with pytest.raises(Crash):
        run_pretrain(run, cfg, mnist_dir, quiet=True)
    monkeypatch.undo()
    assert run.has_state("pretrain") and not run.has("pretrained")
    assert json.loads(run.state_path("pretrain").with_suffix(".json").read_text())["epoch"] == 2
    run_pretrain(run, None, mnist_dir, quiet=True, resume=True)
    _same(ref.path, run.path, "pretrained")
    assert not run.has_state("pretrain")  # removed once the stage is done
    hist = [r for r in run.read_json("history.json", []) if r["stage"] == "pretrain"]
    assert [r["epoch"] for r in hist] == [1, 2]
    # the last step of each epoch ran at this share of the rate (cosine: 8 steps per epoch)
    want = [1.0, 1.0] if schedule == "constant" else [0.5 * (1 + math.cos(math.pi * 7 / 16)),
                                                       0.5 * (1 + math.cos(math.pi * 15 / 16))]
    assert [r["lr_scale"] for r in hist] == pytest.approx(want)


def test_retrain_sigint_mid_epoch_saves_and_resumes_bit_identical(tmp_path, mnist_dir, pretrained,
                                                                  monkeypatch):
    # cosine: the resumed optimiser must not take its (decayed) rates for the base rates
    cfg = retrain_config("tutorial", epochs=2, seed=5, lr_schedule="cosine")
    ref = _copy_run(pretrained, tmp_path / "ref")
    run_retrain(ref, cfg, mnist_dir, quiet=True)
    run = _copy_run(pretrained, tmp_path / "int")
    _crash_after(monkeypatch, 11, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as e:
        run_retrain(run, cfg, mnist_dir, quiet=True)
    monkeypatch.undo()
    assert e.value.exit_code == 130 and "SIGINT" in str(e.value)
    meta = json.loads(run.state_path("retrain").with_suffix(".json").read_text())
    assert (meta["epoch"], meta["step"]) == (2, 3)  # stopped after the step in progress, mid-epoch
    run_retrain(run, None, mnist_dir, quiet=True, resume=True)
    _same(ref.path, run.path, "retrained")
    recs = [r for r in run.read_json("history.json", []) if r["stage"] == "retrain"]
    ref_recs = [r for r in ref.read_json("history.json", []) if r["stage"] == "retrain"]
    assert [r["train_loss"] for r in recs] == [r["train_loss"] for r in ref_recs]


def _sws(data_dir, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SWS_DATA_DIR": str(data_dir)}
    return subprocess.Popen([sys.executable, "-c", DETERMINISTIC, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epoch(run, epoch, proc, timeout=120):
    """Wait until the state file says ``epoch`` is in progress."""
    state = run / "state-retrain.json"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return
        try:
            if json.loads(state.read_text())["epoch"] >= epoch:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)


@pytest.fixture(scope="module")
def cli_reference(pretrained, tmp_path_factory, mnist_dir):
    """An uninterrupted 3-epoch retraining of ``pretrained``, as the CLI runs it (one thread)."""
    ref = _copy_run(pretrained, tmp_path_factory.mktemp("cli") / "ref")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    run_retrain(ref, retrain_config("tutorial", epochs=3, seed=7), mnist_dir, quiet=True)
    return ref.path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_cli_retrain_killed_at_random_point_resumes_bit_identical(tmp_path, pretrained, cli_reference, sig,
                                                                  mnist_dir):
    run = _copy_run(pretrained, tmp_path / "killed")
    p = _sws(mnist_dir, "retrain", str(run.path), "--epochs", "3", "--seed", "7", "--quiet")
    _wait_for_epoch(run.path, 1, p)
    t1 = time.time()
    _wait_for_epoch(run.path, 2, p)
    epoch_seconds = time.time() - t1  # about one epoch: epoch 1 ran in between
    time.sleep(random.uniform(0.0, 0.7) * epoch_seconds)  # somewhere in epoch 2
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0 or run.has("retrained"):
        pytest.skip("the run finished before the signal (machine too fast for this timing)")
    assert not run.has("retrained")
    if sig == signal.SIGKILL:
        assert p.returncode == -9
    else:
        assert p.returncode == 143, err
        assert err.count("\n") == 1 and "interrupted: retrain stopped by SIGTERM" in err
        assert f"sws retrain --resume {run.path}" in err
    assert run.has_state("retrain")
    r = _sws(mnist_dir, "retrain", "--resume", str(run.path), "--quiet")
    out, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    _same(cli_reference, run.path, "retrained")
    assert not run.has_state("retrain")


def test_guard_stops_on_nonfinite_loss_keeping_last_good_state(tmp_path, mnist_dir, pretrained):
    run = _copy_run(pretrained, tmp_path / "div")
    cfg = retrain_config("tutorial", epochs=2, lr_weights=1e30)
    with pytest.raises(DivergenceError) as e:
        run_retrain(run, cfg, mnist_dir, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and "retrain diverged at epoch 1" in msg and "lower --lr-weights" in msg
    assert "last good state kept: before training" in msg
    tensors, meta = run.load_state("retrain")
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if t.is_floating_point())


def _prior_loop(prior):
    loop = train_mod._Loop.__new__(train_mod._Loop)
    loop.stage, loop.saved = "retrain", "after epoch 3"
    return loop


def test_guard_catches_exploding_precision_but_lets_components_merge():
    cfg = retrain_config("tutorial")
    prior = GaussianMixturePrior(cfg.prior)
    train_mod._check_prior(_prior_loop(prior), prior, 4, 10, cfg)  # a fresh prior passes
    with torch.no_grad():
        prior.log_precisions[3] = 40.0
    with pytest.raises(DivergenceError, match="component 3's precision exploded.*lower --lr-log-precisions"):
        train_mod._check_prior(_prior_loop(prior), prior, 4, 10, cfg)
    prior = GaussianMixturePrior(cfg.prior)
    with torch.no_grad():
        prior.means[5] = prior.means[4]  # components 5 and 6 (index 0 is the zero component)
    train_mod._check_prior(_prior_loop(prior), prior, 4, 10, cfg)  # a merge in the making: not stopped


def test_workspace_state_round_trip_continues_identically():
    from sws.prior.kernel import Workspace, kernel_available, mixture_nll_accumulate
    if not kernel_available():
        pytest.skip("C kernel not built")
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(5000, generator=g) * 0.1]
    mu, gamma = torch.linspace(-0.3, 0.3, 7), torch.full((7,), 4.0)
    log_pi = torch.log_softmax(torch.zeros(7), 0)

    def calls(ws, n):
        outs = []
        for i in range(n):
            w[0].grad = None
            outs.append(mixture_nll_accumulate(mu + 0.01 * i, gamma + 0.1 * i, log_pi, w, 1.0, ws)[0].item())
        return outs
    a = Workspace()
    calls(a, 5)
    b = Workspace()
    b.load_state_dict(a.state_dict())
    assert calls(a, 12) == calls(b, 12)


def test_retrain_crash_in_the_snap_phase_resumes_bit_identical(tmp_path, mnist_dir, pretrained, monkeypatch):
    """Epoch 1 of retraining, then two through the snap (8 batches an epoch): a crash at step 4
    of the snap phase's first epoch resumes in the phase, from the same restored state."""
    cfg = retrain_config("tutorial", epochs=1, snap_epochs=2, seed=5)
    ref = _copy_run(pretrained, tmp_path / "ref")
    run_retrain(ref, cfg, mnist_dir, quiet=True)
    recs = [r for r in ref.read_json("history.json", []) if r["stage"] == "retrain"]
    assert [bool(r.get("snap")) for r in recs] == [False, True, True] and recs[0]["snap_begins"]
    run = _copy_run(pretrained, tmp_path / "crash")
    _crash_after(monkeypatch, 12, _raise)
    with pytest.raises(Crash):
        run_retrain(run, cfg, mnist_dir, quiet=True)
    monkeypatch.undo()
    meta = json.loads(run.state_path("retrain").with_suffix(".json").read_text())
    assert meta["epoch"] == 2 and meta["history"][-1]["snap_begins"]
    run_retrain(run, None, mnist_dir, quiet=True, resume=True)
    _same(ref.path, run.path, "retrained")


def _crash_resume(new_run, stage, cfg, mnist_dir, monkeypatch):
    """Run ``stage`` (run_pretrain / run_retrain) with ``cfg`` once straight through and once
    crashed at batch 11 and resumed, each in a folder from ``new_run(name)``: the same bits.
    Returns the straight run."""
    ref = new_run("ref")
    stage(ref, cfg, mnist_dir, quiet=True)
    run = new_run("crash")
    _crash_after(monkeypatch, 11, _raise)
    with pytest.raises(Crash):
        stage(run, cfg, mnist_dir, quiet=True)
    monkeypatch.undo()
    stage(run, None, mnist_dir, quiet=True, resume=True)
    _same(ref.path, run.path, "pretrained" if stage is run_pretrain else "retrained")
    return ref


def _retrain_crash_resume(tmp_path, mnist_dir, pretrained, monkeypatch, cfg, name):
    return _crash_resume(lambda what: _copy_run(pretrained, tmp_path / f"{name}-{what}"), run_retrain, cfg,
                         mnist_dir, monkeypatch)


def test_retrain_with_distillation_resumes_bit_identical(tmp_path, mnist_dir, pretrained, monkeypatch):
    """The teacher is the pretrained checkpoint, rebuilt on resuming, not the resumed network."""
    cfg = retrain_config("tutorial", epochs=2, snap_epochs=0, seed=5, distill=0.5)
    ref = _retrain_crash_resume(tmp_path, mnist_dir, pretrained, monkeypatch, cfg, "distill")
    plain = _copy_run(pretrained, tmp_path / "plain")
    run_retrain(plain, retrain_config("tutorial", epochs=2, snap_epochs=0, seed=5), mnist_dir, quiet=True)
    a = [r["train_loss"] for r in ref.read_json("history.json", []) if r["stage"] == "retrain"]
    b = [r["train_loss"] for r in plain.read_json("history.json", []) if r["stage"] == "retrain"]
    assert a != b


def test_augmented_pretraining_and_retraining_resume_bit_identical(tmp_path, mnist_dir, pretrained, monkeypatch):
    """Each batch's shifts are drawn from where the batch is, so a resume draws the same ones."""
    cfg = PretrainConfig(**{**SMALL, "epochs": 2, "augment": "shift:2"})
    ref = _crash_resume(lambda what: RunDir.create(tmp_path / what), run_pretrain, cfg, mnist_dir, monkeypatch)
    plain = RunDir.create(tmp_path / "plain")
    run_pretrain(plain, PretrainConfig(**{**SMALL, "epochs": 2}), mnist_dir, quiet=True)
    a = [r["train_loss"] for r in ref.read_json("history.json", [])]
    assert a != [r["train_loss"] for r in plain.read_json("history.json", [])]

    rcfg = retrain_config("tutorial", epochs=2, snap_epochs=0, seed=5, augment="shift:1+flip")
    _retrain_crash_resume(tmp_path, mnist_dir, pretrained, monkeypatch, rcfg, "augment")

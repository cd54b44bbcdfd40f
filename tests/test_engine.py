"""One engine for every entry point (issue 12): the CLI and ``sws.compress`` share the loop,
post-processing and writer; model outputs; schedules, guard and resume for a user's module."""

import math
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import sws
from sws.cli import main
from sws.runs.checkpoint import load_checkpoint
from sws.zoo.mnist import load_mnist
from sws.zoo.models import build_model


def call(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def toy(n=256, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


class MLP(nn.Module):
    def __init__(self, d=10):
        super().__init__()
        self.a = nn.Linear(d, 24)
        self.b = nn.Linear(24, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class LogitsNet(MLP):
    """Returns an object with ``.logits``, as Hugging Face models do."""

    def forward(self, x):
        return SimpleNamespace(logits=super().forward(x), hidden=None)


class TupleNet(MLP):
    def forward(self, x):
        return super().forward(x), x.mean()


def test_cli_and_compress_give_bit_identical_weights(tmp_path, capsys, mnist_dir):
    run = tmp_path / "run"
    code, _, err = call(capsys, "run", "--model", "lenet-300-100", "--out", run, "--data-dir", mnist_dir,
                        "--train-subset", "1024", "--val-size", "0", "--pretrain-epochs", "1", "--epochs", "2",
                        "--quiet")
    assert code == 0, err
    tensors, meta = load_checkpoint(run / "pretrained")
    model = build_model("lenet-300-100")
    model.load_state_dict(tensors)
    train = load_mnist(mnist_dir, train_subset=1024)[0]
    model, report = sws.compress(model, train, None, "tutorial", epochs=2)
    quantized, _ = load_checkpoint(run / "quantized")
    state = model.state_dict()
    assert quantized.keys() == state.keys()
    assert all(torch.equal(quantized[k], state[k]) for k in state)


def test_cosine_schedule_is_applied_and_recorded():
    torch.manual_seed(0)
    _, report = sws.compress(MLP(), toy(), toy(seed=1), epochs=3, batch_size=64, lr_schedule="cosine",
                             snap_epochs=2, patience=0)
    # retraining's rates, then the snap phase's, each annealed over its own epochs
    for part in (report.history[:3], report.history[3:]):
        scales = [r["lr_scale"] for r in part]
        assert scales == sorted(scales, reverse=True) and scales[0] < 1 and scales[-1] < 0.05
    assert report.config["lr_schedule"] == "cosine" and report.config["batch_size"] == 64


def test_nan_in_the_loss_stops_with_the_last_good_state():
    states, calls = [], [0]

    def loss(scores, y):
        calls[0] += 1
        value = nn.functional.cross_entropy(scores, y)
        return value * float("nan") if calls[0] == 7 else value

    with pytest.raises(sws.DivergenceError, match="loss is nan.*last good state kept: after epoch 1"):
        sws.compress(MLP(), toy(), epochs=3, batch_size=64, loss_fn=loss,
                     on_state=lambda t, m: states.append((t, m)))
    assert states[-1][1]["epoch"] == 2 and states[-1][1]["step"] == 0   # after epoch 1 (4 steps)


def test_sigterm_then_resume_gives_the_bits_of_an_uninterrupted_run():
    torch.manual_seed(3)
    start = MLP().state_dict()
    settings = dict(epochs=3, batch_size=32, tau=0.01)

    def fresh():
        m = MLP()
        m.load_state_dict(start)
        return m

    reference, _ = sws.compress(fresh(), toy(), **settings)
    saved, calls = [], [0]

    def loss(scores, y):
        calls[0] += 1
        if calls[0] == 13:                    # mid-epoch 2 (8 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return nn.functional.cross_entropy(scores, y)

    with pytest.raises(sws.TrainingInterrupted) as e:
        sws.compress(fresh(), toy(), loss_fn=loss, on_state=lambda t, m: saved.append((t, m)), **settings)
    assert e.value.exit_code == 143 and saved[-1][1]["step"] == 5
    resumed, _ = sws.compress(MLP(), toy(), resume=saved[-1], **settings)
    ref, got = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize("net", [LogitsNet, TupleNet])
def test_outputs_with_logits_or_a_tuple_train_and_evaluate(net):
    torch.manual_seed(0)
    model, report = sws.compress(net(), toy(), toy(seed=1), epochs=2, batch_size=32)
    assert {"before_accuracy", "retrained_accuracy", "quantized_accuracy"} <= set(report.metrics)
    assert "val_accuracy" in report.history[-1] and "val_loss" in report.history[-1]
    assert sws.evaluate(model, toy(seed=2))["accuracy"] >= 0


def test_any_map_style_dataset_of_pairs():
    class Pairs(torch.utils.data.Dataset):
        def __init__(self):
            self.data = toy()

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            x, y = self.data[i]
            return {"x": x}, y

    class DictNet(MLP):
        def forward(self, x):
            return super().forward(x)

    torch.manual_seed(0)
    model, report = sws.compress(DictNet(), Pairs(), Pairs(), epochs=1, batch_size=64, snap_epochs=1)
    assert [r["epoch"] for r in report.history] == [1, 2] and "val_accuracy" in report.history[-1]


PACKAGE = {
    "nets.py": '''
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

def with_a_mask():
    net = build()
    net.register_buffer("mask", torch.ones(3, dtype=torch.bool))
    return net

def not_a_module():
    return 42

def fails():
    raise RuntimeError("no GPU here")
''',
    "data.py": '''
import torch
from torch.utils.data import TensorDataset

def _set(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())

def splits():
    return _set(512, 0), _set(128, 1), _set(128, 2)

def wrong():
    return _set(10, 0), None

def wrong_shape():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(20, 5, generator=g), torch.zeros(20, dtype=torch.long)), None, None
''',
}


_PACKAGES = [0]


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    _PACKAGES[0] += 1
    name = f"userpkg_{os.getpid()}_{_PACKAGES[0]}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for file, text in PACKAGE.items():
        (pkg / file).write_text(text)
    monkeypatch.chdir(tmp_path)
    return name


def test_cli_end_to_end_with_a_user_module_and_data(tmp_path, capsys, user_package):
    p = user_package
    run = tmp_path / "run"
    common = ["--model", f"{p}.nets:build", "--data", f"{p}.data:splits", "--pretrain-epochs", "2",
              "--epochs", "3", "--batch-size", "64", "--lr-weights", "1e-3", "--no-budget", "--quiet"]
    code, out, err = call(capsys, "run", "--out", run, *common)
    assert code == 0, err
    assert "test accuracy: pretrained" in out and (run / "model.sws").is_file()
    code, out, err = call(capsys, "evaluate", run)
    assert code == 0 and "pretrained" in out and "quantized" in out, err
    code, out, err = call(capsys, "evaluate", run / "model.sws", "--data", f"{p}.data:splits")
    assert code == 0 and "model" in out, err
    code, out, err = call(capsys, "report", run)
    assert code == 0 and (run / "report.html").is_file(), err
    # a run interrupted in retraining, resumed, ends with the same file
    other = tmp_path / "other"
    from sws.method.batches import Source
    real, count = Source.epoch, [0]

    def crashing(self, batch_size, generator=None, *args):
        for b in real(self, batch_size, generator, *args):
            if generator is not None:
                count[0] += 1
                if count[0] == 2 * 8 + 5:       # pretraining is 2 epochs of 8 steps
                    raise KeyboardInterrupt
            yield b
    Source.epoch = crashing
    try:
        code, _, err = call(capsys, "run", "--out", other, *common)
    finally:
        Source.epoch = real
    assert code == 130 and (other / "state-retrain.safetensors").is_file()
    code, _, err = call(capsys, "run", "--resume", other)
    assert code == 0, err
    assert (other / "model.sws").read_bytes() == (run / "model.sws").read_bytes()


@pytest.mark.parametrize("model, data, message", [
    ("nosuchmodule_xyz.nets:build", None, "cannot import module 'nosuchmodule_xyz.nets'"),
    ("{p}.nets:missing", None, "has no function 'missing'"),
    ("{p}.nets:not_a_module", None, "returned int, not a torch.nn.Module"),
    ("{p}.nets:fails", None, "calling fails() failed (RuntimeError: no GPU here)"),
    ("{p}.nets:build", "{p}.data:wrong", "not (train, val, test)"),
    ("{p}.nets:build", "{p}.data:wrong_shape", "cannot take the training inputs"),
    ("not a reference", None, "neither a reference net"),
    ("{p}.nets:build", "not-a-ref", "expected PKG.MODULE:FUNCTION"),
    ("{p}.nets:with_a_mask", None, "mask is bool, which a .sws file cannot store"),
])
def test_bad_references_get_one_line_and_exit_2(tmp_path, capsys, user_package, model, data, message):
    p = user_package
    args = ["run", "--out", tmp_path / "r", "--model", model.format(p=p), "--pretrain-epochs", "1",
            "--epochs", "1", "--quiet"]
    if data:
        args += ["--data", data.format(p=p)]
    else:
        args += ["--data", f"{p}.data:splits"]
    code, _, err = call(capsys, *args)
    assert code == 2 and message in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert not (tmp_path / "r" / "pretrained.safetensors").exists()    # refused before any training


def test_force_on_retrain_never_leaves_a_stale_file(tmp_path, capsys, user_package):
    p = user_package
    run = tmp_path / "run"
    code, _, err = call(capsys, "run", "--out", run, "--model", f"{p}.nets:build", "--data", f"{p}.data:splits",
                        "--pretrain-epochs", "1", "--epochs", "2", "--batch-size", "64", "--no-budget", "--quiet")
    assert code == 0, err
    old = (run / "model.sws").read_bytes()
    code, _, err = call(capsys, "retrain", run, "--force", "--epochs", "1", "--tau", "0.01", "--no-budget",
                        "--quiet")
    assert code == 0, err
    assert not (run / "quantized.safetensors").exists() and not (run / "model.sws").exists()
    code, _, err = call(capsys, "compress", run)
    assert code == 2 and "sws quantize" in err
    code, _, err = call(capsys, "run", "--resume", run)     # rebuilds what is downstream
    assert code == 0, err
    assert (run / "model.sws").read_bytes() != old
    retrained = load_checkpoint(run / "retrained")[1]["retrain"]
    assert retrained["tau"] == 0.01 and retrained["epochs"] == 1


def test_weights_file_starts_from_given_weights(tmp_path, capsys, user_package):
    p = user_package
    from sws.zoo.refs import resolve_model
    torch.manual_seed(5)
    net = resolve_model(f"{p}.nets:build")
    torch.save(net.state_dict(), tmp_path / "w.pt")
    run = tmp_path / "run"
    code, _, err = call(capsys, "pretrain", "--out", run, "--model", f"{p}.nets:build", "--data", f"{p}.data:splits",
                        "--weights", tmp_path / "w.pt", "--quiet")
    assert code == 0, err
    tensors, _ = load_checkpoint(run / "pretrained")
    assert all(torch.equal(tensors[k], v) for k, v in net.state_dict().items())
    code, _, err = call(capsys, "pretrain", "--out", tmp_path / "r2", "--model", "lenet-300-100",
                        "--weights", tmp_path / "w.pt", "--quiet")
    assert code == 2 and "weights do not match the model" in err


def test_surface_in_a_hand_written_loop(tmp_path):
    torch.manual_seed(0)
    model, data = MLP(), toy()
    s = sws.SoftWeightSharing(model, "tutorial", n_train=len(data), tau=0.01)
    opt = s.optimizer()
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    for epoch in range(2):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            c = s.backward(epoch=epoch)
            assert math.isfinite(float(c))
            opt.step()
    q = s.quantize_()
    assert q.codebook[0] == 0 and set(model.a.weight.unique().tolist()) <= set(q.codebook.tolist())
    size = s.save(tmp_path / "m.sws")
    back = sws.load(tmp_path / "m.sws", model=MLP())
    x = data.tensors[0][:5]
    assert size == (tmp_path / "m.sws").stat().st_size and torch.equal(back(x), model(x))


def test_custom_training_loop_example_runs(tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "custom_training_loop.py"
    spec = importlib.util.spec_from_file_location("loop_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    stats = example.main(["--out", str(tmp_path / "l.sws"), "--epochs", "3"])
    assert "outputs identical" in capsys.readouterr().out and stats["nonzero_share"] < 1


def test_search_on_a_user_module_and_data(tmp_path, capsys, user_package):
    p = user_package
    out = tmp_path / "s"
    code, stdout, err = call(capsys, "search", "run", out, "--trials", "2", "--model", f"{p}.nets:build",
                             "--data", f"{p}.data:splits", "--pretrain-epochs", "1", "--epochs", "1",
                             "--batch-size", "64", "--quiet")
    assert code == 0, err
    import json
    trials = sorted((out / "trials").glob("*/trial.json"))
    assert len(trials) == 2
    record = json.loads(trials[0].read_text())
    assert 0 <= record["val_error"] <= 1 and record["cr"] > 0
    settings = json.loads((out / "search.json").read_text())
    assert settings["model"] == f"{p}.nets:build" and settings["data"] == f"{p}.data:splits"


def test_resume_under_another_environment_warns():
    saved = []
    torch.manual_seed(0)
    sws.compress(MLP(), toy(), epochs=1, batch_size=64, on_state=lambda t, m: saved.append((t, m)))
    tensors, meta = saved[0]
    assert meta["environment"]["torch_threads"] == torch.get_num_threads()
    meta = {**meta, "environment": {**meta["environment"], "torch_threads": 999}}
    with pytest.warns(RuntimeWarning, match="resumes under"):
        sws.compress(MLP(), toy(), epochs=1, batch_size=64, resume=(tensors, meta))


def test_a_holdout_of_a_users_data_is_carved_from_its_training_set(tmp_path, capsys, user_package):
    import json

    from sws.runs.inputs import load_data, load_holdout
    from sws.runs.rundir import RunDir
    p, run = user_package, tmp_path / "run"
    code, _, err = call(capsys, "pretrain", "--out", run, "--model", f"{p}.nets:build", "--data", f"{p}.data:splits",
                        "--holdout-size", "100", "--pretrain-epochs", "1", "--quiet")
    assert code == 0, err
    assert 0 <= json.loads((run / "metrics.json").read_text())["pretrained"]["holdout_error"] <= 1
    data = RunDir.open(run).load("pretrained")[1]["data"]
    train, val, test = load_data(data)
    holdout = load_holdout(data)
    assert (len(train), len(val), len(test), len(holdout)) == (412, 128, 128, 100)   # its own val kept
    assert not set(train.indices) & set(holdout.indices)


def test_compress_scores_a_holdout_that_changes_no_choice():
    def once(holdout):
        torch.manual_seed(0)
        return sws.compress(MLP(), toy(), toy(seed=1), epochs=2, batch_size=64, snap_epochs=1, holdout=holdout)
    a, ra = once(toy(seed=2))
    b, rb = once(toy(n=128, seed=3))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)            # the same network, bit for bit
    assert ra.budget == rb.budget and ra.metrics["quantized_error"] == rb.metrics["quantized_error"]
    for key in ("before_holdout_error", "quantized_holdout_error", "quantized_holdout_loss"):
        assert 0 <= ra.metrics[key] and key in rb.metrics
    assert ra.metrics["quantized_holdout_loss"] != rb.metrics["quantized_holdout_loss"]
    _, plain = once(None)
    assert not any("holdout" in k for k in plain.metrics)

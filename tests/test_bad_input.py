"""Bad input everywhere: one line on stderr, exit code 2, nothing already on disk damaged.

Data folders (missing, corrupt, wrong shapes), checkpoints that do not match
the model, training states that cannot be resumed, ``.sws`` files from a newer
version, a full disk while writing, run folders that exist.
"""

import errno
import gzip
import hashlib
import os
import struct
import sys

import numpy as np
import pytest
import torch

import sws.runs.checkpoint
import sws.storage
from sws.cli import main
from sws.zoo.mnist import write_idx
from sws.zoo.models import build_model


def call(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def bad(capsys, *args, expect: str):
    """Run the CLI and check the error contract; return the message."""
    code, _, err = call(capsys, *args)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expect in err, err
    if os.environ.get("SWS_SHOW_ERRORS"):  # for benchmarks/RESULTS.md: the messages users see
        print(f"{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}\t{err.strip()}", file=sys.__stderr__)
    return err


def files(folder):
    """sha256 of every file under ``folder`` (to check nothing changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_mnist(folder, n_train=300, n_test=100, size=28, labels_off=0):
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, size, size)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train + labels_off))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, size, size)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fake_mnist(tmp_path_factory.mktemp("bad") / "mnist")


@pytest.fixture
def run(tmp_path, data, capsys):
    """A run folder with a pretrained LeNet-300-100 (one epoch on 300 fake images)."""
    code, _, err = call(capsys, "pretrain", "--out", tmp_path / "run", "--model", "lenet-300-100",
                        "--pretrain-epochs", "1", "--data-dir", data, "--quiet")
    assert code == 0, err
    return tmp_path / "run"


PRETRAIN = ["pretrain", "--model", "lenet-300-100", "--pretrain-epochs", "1", "--quiet"]


# -- data folders --------------------------------------------------------------------------

def test_missing_data_folder(capsys, tmp_path):
    bad(capsys, *PRETRAIN, "--out", tmp_path / "r", "--data-dir", tmp_path / "nope",
        expect="data folder (--data-dir) does not exist")


def test_data_folder_missing_a_file(capsys, tmp_path, data):
    d = tmp_path / "d"
    d.mkdir()
    for p in data.iterdir():
        if "t10k-labels" not in p.name:
            (d / p.name).write_bytes(p.read_bytes())
    bad(capsys, *PRETRAIN, "--out", tmp_path / "r", "--data-dir", d, expect="missing t10k-labels-idx1-ubyte")


def test_truncated_gzip(capsys, tmp_path, data):
    d = tmp_path / "d"
    d.mkdir()
    for p in data.iterdir():
        blob = p.read_bytes()
        (d / p.name).write_bytes(blob[:len(blob) // 2] if "train-images" in p.name else blob)
    before = files(d)
    bad(capsys, *PRETRAIN, "--out", tmp_path / "r", "--data-dir", d, expect="truncated or corrupt gzip")
    assert files(d) == before


def test_idx_header_disagrees_with_body(capsys, tmp_path, data):
    d = tmp_path / "d"
    d.mkdir()
    for p in data.iterdir():
        blob = gzip.decompress(p.read_bytes())
        if "t10k-images" in p.name:
            blob = blob[:4] + struct.pack(">I", 101) + blob[8:]  # declares one image more
        (d / p.name).write_bytes(gzip.compress(blob))
    bad(capsys, *PRETRAIN, "--out", tmp_path / "r", "--data-dir", d, expect="truncated or corrupt")


def test_wrong_image_shape(capsys, tmp_path):
    d = fake_mnist(tmp_path / "d", size=32)
    bad(capsys, *PRETRAIN, "--out", tmp_path / "r", "--data-dir", d,
        expect="training images have shape (32, 32), the models take 28x28")


def test_labels_do_not_match_images(capsys, tmp_path):
    d = fake_mnist(tmp_path / "d", labels_off=5)
    bad(capsys, *PRETRAIN, "--out", tmp_path / "r", "--data-dir", d, expect="300 images but")


def test_labels_file_where_images_belong(capsys, tmp_path, data):
    d = tmp_path / "d"
    d.mkdir()
    for p in data.iterdir():
        src = data / "train-labels-idx1-ubyte.gz" if "train-images" in p.name else p
        (d / p.name).write_bytes(src.read_bytes())
    bad(capsys, *PRETRAIN, "--out", tmp_path / "r", "--data-dir", d, expect="wrong magic number")


# -- checkpoints ---------------------------------------------------------------------------

def test_checkpoint_of_another_model(capsys, run, data):
    torch.manual_seed(0)
    from safetensors.torch import save_file
    save_file(build_model("lenet-5-caffe").state_dict(), run / "pretrained.safetensors")
    before = files(run)
    bad(capsys, "retrain", run, "--epochs", "1", "--data-dir", data, "--quiet",
        expect="tensors do not match model 'lenet-300-100'")
    bad(capsys, "evaluate", run / "pretrained.safetensors", "--data-dir", data,
        expect="tensors do not match model 'lenet-300-100'")
    after = files(run)
    after.pop("config.json"), before.pop("config.json")  # the retrain command is recorded
    assert after == before


def test_truncated_checkpoint(capsys, run, data):
    p = run / "pretrained.safetensors"
    p.write_bytes(p.read_bytes()[:1000])
    bad(capsys, "retrain", run, "--epochs", "1", "--data-dir", data, "--quiet",
        expect="not a readable safetensors file")


def _two_file_checkpoint(stem):
    """Rewrite a checkpoint as versions before issue 16 wrote it: no JSON inside the tensor file."""
    from safetensors.torch import load_file, save_file
    save_file(load_file(stem.with_suffix(".safetensors")), stem.with_suffix(".safetensors"), metadata={"sws": "1"})


def test_sidecar_not_json(capsys, run, data):
    """An old two-file checkpoint needs its sidecar; a one-file checkpoint does not read it."""
    (run / "pretrained.json").write_text("{not json")
    code, out, err = call(capsys, "evaluate", run, "--data-dir", data)
    assert code == 0 and "accuracy" in out, err
    _two_file_checkpoint(run / "pretrained")
    bad(capsys, "evaluate", run, "--data-dir", data, expect="malformed JSON sidecar")


def test_two_file_checkpoints_still_read(capsys, run, data):
    tensors, meta = sws.runs.checkpoint.load_checkpoint(run / "pretrained")
    _two_file_checkpoint(run / "pretrained")
    old_tensors, old_meta = sws.runs.checkpoint.load_checkpoint(run / "pretrained")
    assert old_meta == meta and all(torch.equal(old_tensors[k], v) for k, v in tensors.items())
    (run / "pretrained.json").unlink()
    bad(capsys, "evaluate", run, "--data-dir", data, expect="pretrained.json: checkpoint file missing")


def test_metadata_inside_the_checkpoint_not_json(capsys, run, data):
    from safetensors.torch import load_file, save_file
    p = run / "pretrained.safetensors"
    save_file(load_file(p), p, metadata={"sws": "1", sws.runs.checkpoint.CHECKPOINT_KEY: "{not json"})
    bad(capsys, "evaluate", run, "--data-dir", data, expect="pretrained.safetensors: malformed JSON metadata")


_KILL_BETWEEN_WRITES = """
import os, signal, sys
from pathlib import Path
import sws.runs.checkpoint as ck
tensors, meta = ck.load_checkpoint(Path(sys.argv[1]))
real = ck.atomic_write
def write(path, data):
    if path.suffix == ".json":
        os.kill(os.getpid(), signal.SIGKILL)     # kill -9 between the tensor file and its copy
    real(path, data)
ck.atomic_write = write
ck.save_checkpoint(Path(sys.argv[1]), {k: v + 1 for k, v in tensors.items()}, {**meta, "overwritten": True})
"""


def test_kill_9_between_the_two_writes_of_a_forced_overwrite(run):
    """The tensors and their JSON are one file: a kill after it leaves them paired."""
    import subprocess
    tensors, meta = sws.runs.checkpoint.load_checkpoint(run / "pretrained")
    sidecar = (run / "pretrained.json").read_bytes()
    proc = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_WRITES, str(run / "pretrained")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    new_tensors, new_meta = sws.runs.checkpoint.load_checkpoint(run / "pretrained")
    assert new_meta == {**meta, "overwritten": True}
    assert all(torch.equal(new_tensors[k], v + 1) for k, v in tensors.items())
    assert (run / "pretrained.json").read_bytes() == sidecar          # only the readable copy is stale
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# -- training states -----------------------------------------------------------------------

def _interrupted_retrain(run, data, monkeypatch):
    """Leave a retraining state in ``run`` as a crash in epoch 1 would."""
    from sws.method.batches import Source
    real = Source.epoch

    def crashing(self, bs, generator=None, *args):
        if generator is not None:
            raise RuntimeError("crash")
        return real(self, bs, generator, *args)
    monkeypatch.setattr(Source, "epoch", crashing)
    with pytest.raises(RuntimeError):
        main(["retrain", str(run), "--epochs", "2", "--data-dir", str(data), "--quiet"])
    monkeypatch.undo()
    assert (run / "state-retrain.safetensors").is_file()


def test_resume_without_state(capsys, run, data):
    bad(capsys, "retrain", "--resume", run, "--data-dir", data, expect="no training state to resume from")
    bad(capsys, "pretrain", "--resume", run, "--data-dir", data, expect="pretraining already finished")
    bad(capsys, "run", "--resume", run, "--data-dir", data, expect="not made by 'sws run'")
    bad(capsys, "retrain", "--resume", run.parent / "nope", expect="no such run folder")


def test_resume_refuses_new_settings(capsys, run, data, monkeypatch):
    _interrupted_retrain(run, data, monkeypatch)
    capsys.readouterr()
    bad(capsys, "retrain", "--resume", run, "--tau", "0.1", "--seed", "3", "--data-dir", data,
        expect="continues with the settings recorded in the run folder; drop --tau, --seed")


def test_fresh_retrain_refuses_to_overwrite_interrupted_state(capsys, run, data, monkeypatch):
    _interrupted_retrain(run, data, monkeypatch)
    capsys.readouterr()
    before = files(run)
    bad(capsys, "retrain", run, "--epochs", "1", "--data-dir", data,
        expect="holds an interrupted retrain (state-retrain.safetensors); continue it with")
    assert files(run) == before


def test_truncated_state(capsys, run, data, monkeypatch):
    _interrupted_retrain(run, data, monkeypatch)
    capsys.readouterr()
    p = run / "state-retrain.safetensors"
    p.write_bytes(p.read_bytes()[:5000])
    bad(capsys, "retrain", "--resume", run, "--data-dir", data, expect="not a readable training state")


def test_state_of_another_model(capsys, run, data, monkeypatch, tmp_path):
    _interrupted_retrain(run, data, monkeypatch)
    capsys.readouterr()
    # the same run's state, but its pretrained net swapped for another architecture
    other = tmp_path / "other"
    code, _, err = call(capsys, "pretrain", "--out", other, "--model", "tutorial-conv", "--pretrain-epochs", "1",
                        "--data-dir", data, "--quiet")
    assert code == 0, err
    (other / "state-retrain.safetensors").write_bytes((run / "state-retrain.safetensors").read_bytes())
    before = files(other)
    bad(capsys, "retrain", "--resume", other, "--data-dir", data, expect="started from another pretrained checkpoint")
    assert files(other) == before


def test_checkpoint_is_not_a_state(capsys, run, data):
    (run / "state-retrain.safetensors").write_bytes((run / "pretrained.safetensors").read_bytes())
    bad(capsys, "retrain", "--resume", run, "--data-dir", data, expect="not a training state")


# -- .sws files ----------------------------------------------------------------------------

def test_sws_file_from_a_newer_version(capsys, tmp_path, data):
    from sws.method.files import save
    state = {k: torch.zeros_like(v) for k, v in build_model("lenet-300-100").state_dict().items()}
    path = tmp_path / "m.sws"
    save(path, state, name="lenet-300-100")
    blob = bytearray(path.read_bytes())
    blob[8:12] = struct.pack("<I", 99)
    path.write_bytes(bytes(blob))
    before = files(tmp_path)
    bad(capsys, "evaluate", path, "--data-dir", data, expect="format version 99 not supported")
    bad(capsys, "inspect", path, expect="format version 99 not supported")
    assert files(tmp_path) == before


# -- a full disk ---------------------------------------------------------------------------

def _disk_full_above(monkeypatch, limit):
    """fsync fails with ENOSPC for files larger than ``limit`` bytes (a disk nearly full)."""
    real = os.fsync

    def fsync(fd):
        if os.fstat(fd).st_size > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(sws.storage.os, "fsync", fsync)


def test_disk_full_while_writing_training_state(capsys, run, data, monkeypatch):
    before = files(run)
    _disk_full_above(monkeypatch, 100_000)
    err = bad(capsys, "retrain", run, "--epochs", "1", "--data-dir", data, "--quiet",
              expect="state-retrain.safetensors: cannot write (No space left on device)")
    monkeypatch.undo()
    after = files(run)
    assert not [p for p in after if p.endswith(".tmp")]  # no temporary file left behind
    for name in ("pretrained.safetensors", "pretrained.json", "metrics.json"):
        assert after[name] == before[name]
    assert "retrained.safetensors" not in after and "error:" in err


def test_disk_full_while_overwriting_a_checkpoint(capsys, run, data, monkeypatch):
    tensors, meta = sws.runs.checkpoint.load_checkpoint(run / "pretrained")
    before = files(run)
    _disk_full_above(monkeypatch, 0)
    with pytest.raises(sws.errors.StorageError, match="the previous version, if any, is unchanged"):
        sws.runs.checkpoint.save_checkpoint(run / "pretrained", {k: v + 1 for k, v in tensors.items()}, meta)
    monkeypatch.undo()
    assert files(run) == before


# -- run folders ---------------------------------------------------------------------------

def test_run_folder_exists(capsys, run, data):
    before = files(run)
    bad(capsys, *PRETRAIN, "--out", run, "--data-dir", data, expect="run folder exists")
    bad(capsys, "run", "--out", run, "--model", "lenet-300-100", "--data-dir", data, expect="run folder exists")
    assert files(run) == before


def test_run_folder_is_a_file(capsys, tmp_path, data):
    f = tmp_path / "f"
    f.write_text("keep me")
    bad(capsys, *PRETRAIN, "--out", f, "--data-dir", data, expect="exists and is not a folder")
    assert f.read_text() == "keep me"


def test_retrained_run_is_not_overwritten(capsys, run, data):
    code, _, err = call(capsys, "retrain", run, "--epochs", "1", "--data-dir", data, "--quiet")
    assert code == 0, err
    before = files(run)
    bad(capsys, "retrain", run, "--epochs", "1", "--data-dir", data, expect="already holds a retrained checkpoint")
    bad(capsys, "retrain", "--resume", run, "--data-dir", data, expect="retraining already finished")
    assert files(run) == before

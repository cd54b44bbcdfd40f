"""WRN-16-4 (the paper's ResNet light) and the CIFAR-10 python-batch reader."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sws
from sws.zoo.cifar import TEST_BATCH, TRAIN_BATCHES, load_cifar10, random_crop_flip, read_batch, write_batch
from sws.errors import DataError
from sws.zoo.wrn import WideResNet, build_wrn


def test_wrn_16_4_size_forward_backward():
    model = build_wrn(seed=0)
    assert sum(p.numel() for p in model.parameters()) == 2_748_890     # "about 2.7 M" (SPEC 6)
    x = torch.rand(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    nn.functional.cross_entropy(out, torch.arange(4)).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(m.stride == (2, 2) for m in model.modules() if isinstance(m, nn.Conv2d)) == 4
    with pytest.raises(ValueError):
        WideResNet(depth=15)


def test_wrn_one_batch_retrain_with_resnet_preset(tmp_path):
    torch.manual_seed(0)
    model = build_wrn(seed=0)
    ds = TensorDataset(torch.rand(8, 3, 32, 32), torch.arange(8) % 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "wrn.sws"
    model, report = sws.compress(model, DataLoader(ds, batch_size=8), None, "resnet", epochs=1,
                                 out=out)
    assert len(report.history[-1]["prior"]["means"]) == 64
    assert report.config["prior"]["cover"] == "weights"
    assert not any("bn" in name or name.endswith("bias") for name in report.covered)
    assert len(report.covered) == 17                      # 13 3x3 + 3 shortcut convs, the classifier
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "conv1.weight" in changed
    restored = sws.load(out, model=build_wrn())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(restored(x), model(x))


def write_cifar(folder, n=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for name in TRAIN_BATCHES + (TEST_BATCH,):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        write_batch(folder / name, x, y, name)
        data[name] = (x, y)
    return data


def test_cifar_reader_on_generated_batches(tmp_path):
    data = write_cifar(tmp_path / "cifar-10-batches-py")
    train, test = load_cifar10(tmp_path, download=False)      # finds the nested folder
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    x1, y1 = data["data_batch_2"]
    assert torch.equal(train.x[4:8], torch.from_numpy(x1).float() / 255)
    assert train.y[4:8].tolist() == y1.tolist()
    train3, _ = load_cifar10(tmp_path / "cifar-10-batches-py", download=False, train_subset=3)
    assert len(train3) == 3
    aug = random_crop_flip(train.x[:5], torch.Generator().manual_seed(0))
    assert aug.shape == (5, 3, 32, 32)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("case", ["hostile", "shape", "labels", "garbage", "missing"])
def test_cifar_reader_rejects_bad_batches(tmp_path, case):
    path = tmp_path / "b"
    if case == "hostile":
        path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    elif case == "shape":
        path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    elif case == "labels":
        write_batch(path, np.zeros((2, 3, 32, 32), np.uint8), [0, 12])
    elif case == "garbage":
        path.write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(DataError):
        read_batch(path)


def test_cifar_folder_without_batches(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 python batches"):
        load_cifar10(tmp_path, download=False)

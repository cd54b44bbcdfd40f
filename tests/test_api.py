"""sws.compress on user-defined modules: selection, tied parameters, file round trip, example."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sws
from sws.method.surface import select_parameters
from sws.config import PriorConfig
from sws.errors import ConfigError
from sws.format.container import FormatError, InconsistentPayloadError, read
from sws.prior import GaussianMixturePrior

ROOT = Path(__file__).resolve().parents[1]


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.ln = nn.LayerNorm(8 * 4 * 4)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc(self.ln(x.flatten(1)))


class Tied(nn.Module):
    """An autoencoder-like classifier whose two linear layers share one weight matrix."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(12, 12)
        self.dec = nn.Linear(12, 12)
        self.dec.weight = self.enc.weight
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        return self.out(torch.relu(self.dec(torch.relu(self.enc(x)))))


def loaders(shape, n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = (x.flatten(1)[:, 0] > 0).long() + (x.flatten(1)[:, 1] > 0).long()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=32, shuffle=True), DataLoader(ds, batch_size=48)


def test_default_selection_skips_normalisation():
    names = set(select_parameters(BNNet()))
    assert names == {"conv1.weight", "conv1.bias", "conv2.weight", "fc.weight", "fc.bias"}
    assert set(select_parameters(BNNet(), cover="weights")) == {"conv1.weight", "conv2.weight",
                                                               "fc.weight"}
    assert set(select_parameters(BNNet(), exclude=["conv1.*"])) == {"conv2.weight", "fc.weight",
                                                                    "fc.bias"}
    assert set(select_parameters(BNNet(), include=[nn.Conv2d])) == {"conv1.weight", "conv1.bias",
                                                                    "conv2.weight"}
    assert "bn1.weight" in select_parameters(BNNet(), skip_norm=False)
    with pytest.raises(ConfigError):
        select_parameters(BNNet(), include=[3])


def test_tied_parameter_is_covered_once():
    covered = select_parameters(Tied())
    assert "enc.weight" in covered and "dec.weight" not in covered
    assert len(covered) == 5


def test_compress_bn_cnn_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BNNet()
    seen = {}
    train, val = loaders((1, 8, 8))
    out = tmp_path / "bn.sws"
    model, report = sws.compress(model, train, val, "tutorial", epochs=2, init_sigma=0.05, out=out, budget=False,
                                 on_epoch=lambda rec: seen.update(bn=model.bn1.weight.detach().clone()))
    cb = set(report.codebook)
    for name in report.covered:
        assert set(model.get_parameter(name).detach().unique().tolist()) <= cb
    assert torch.equal(model.bn1.weight, seen["bn"])          # batch-norm left as retrained
    assert report.history[-1]["epoch"] == 2 and "val_accuracy" in report.history[-1]
    assert {"before_accuracy", "quantized_accuracy"} <= set(report.metrics)
    assert report.file["bytes"] == out.stat().st_size and report.file["cr_file"] > 1
    header = read(out).header
    assert header["model"]["name"] == "user:BNNet"
    assert {t["name"] for t in header["tensors"]} == set(model.state_dict())
    x = next(iter(val))[0]
    restored = sws.load(out, model=BNNet())
    assert not restored.training
    assert torch.equal(restored(x), model(x))
    with pytest.raises(FormatError, match="user-defined model"):
        sws.load(out)
    with pytest.raises(InconsistentPayloadError):
        sws.load(out, model=Tied())


def test_compress_tied_parameters(tmp_path):
    torch.manual_seed(1)
    model = Tied()
    train, val = loaders((12,))
    out = tmp_path / "tied.sws"
    model, report = sws.compress(model, train, None, "tutorial", epochs=1, out=out)
    assert model.dec.weight is model.enc.weight
    assert "dec.weight" not in report.covered
    header = read(out).header
    assert header["model"]["aliases"] == {"dec.weight": "enc.weight"}
    assert "dec.weight" not in {t["name"] for t in header["tensors"]}
    restored = sws.load(out, model=Tied())
    assert restored.dec.weight is restored.enc.weight         # still tied after loading
    x = next(iter(val))[0]
    assert torch.equal(restored(x), model(x))


def test_save_module_refuses_off_codebook_values(tmp_path):
    with pytest.raises(ValueError, match="not a codebook entry"):
        sws.save(tmp_path / "x.sws", Tied(), codebook=[0.0, 0.5], quantized=["enc.weight"])


def test_parametrizations_are_refused_with_the_call_that_removes_them():
    """weight_norm and spectral_norm tensors are not the weights a layer uses (a snapped row of
    zeros divides by zero: retraining through the snap diverged): refused by name, with a fix
    that works and an exclude that works."""
    import warnings
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)            # the older weight_norm's
        nets = [nn.Sequential(weight_norm(nn.Linear(6, 16)), nn.ReLU(), nn.Linear(16, 3)),
                spectral_norm(nn.Linear(6, 16)), nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(6, 16)))]
    for model, name in zip(nets, ["0.parametrizations.weight.original0", "parametrizations.weight.original",
                                  "0.weight_g"]):
        with pytest.raises(ConfigError, match="a tensor of a parametrization") as e:
            select_parameters(model)
        message = str(e.value)
        assert f"exclude=[{name!r}]" in message
        assert name not in select_parameters(model, exclude=["*original*", "*weight_g", "*weight_v"])
        fix = message[message.index("first (") + len("first ("):message.index(") or leave")]
        exec(fix, {"torch": torch, "model": model})
        assert "weight" in {n.rpartition(".")[2] for n in select_parameters(model)}


def test_compress_a_float64_network_and_load_it_back(tmp_path):
    """A float64 network is compressed and stored (its codebook values are float32 numbers) and
    loads back into a float64 module exactly."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 12, generator=g, dtype=torch.float64)
    ds = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    out = tmp_path / "f64.sws"
    model, report = sws.compress(Tied().double(), ds, ds, "tutorial", epochs=2, batch_size=32, out=out,
                                 write_over_budget=True)                 # a tiny run: about storage
    restored = sws.load(out, model=Tied().double())
    assert restored.enc.weight.dtype == torch.float64
    for k, v in model.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k
    assert torch.equal(restored(x), model(x))


def test_compress_a_network_with_sparse_gradients(tmp_path):
    """nn.Embedding(sparse=True): retraining (the prior's gradient is dense), the codebook's
    fine-tuning and the file all work, and the file loads back identical."""
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc = nn.Embedding(30, 8, sparse=True), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.emb(x).mean(1))
    torch.manual_seed(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 30, (96, 5), generator=g)
    ds = TensorDataset(x, x[:, 0] % 3)
    out = tmp_path / "bag.sws"
    model, report = sws.compress(Bag(), ds, ds, "tutorial", epochs=2, batch_size=32, out=out,
                                 write_over_budget=True)
    assert report.config["finetune_epochs"] > 0
    restored = sws.load(out, model=Bag())
    assert torch.equal(restored(x), model(x))


def test_integer_labels_of_any_dtype_are_class_indices(tmp_path):
    """int32 labels (numpy's default on some systems) give the same network as int64 ones;
    labels shaped (n, 1) get a DataError naming both shapes instead of torch's message."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 12, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    nets = []
    for labels in (y, y.int()):
        torch.manual_seed(5)
        nets.append(sws.compress(Tied(), TensorDataset(x, labels), TensorDataset(x, labels), epochs=1,
                                 batch_size=32)[0])
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(sws.DataError, match=r"scores of shape \(32, 3\) with targets of shape \(32, 1\)"):
        sws.compress(Tied(), TensorDataset(x, y[:, None]), epochs=1, batch_size=32)


def test_compress_refuses_what_the_file_cannot_store_before_training(tmp_path):
    """A covered tensor of another dtype, or a buffer the file cannot hold, is refused with a
    ConfigError that names it and the fix, before the first step (not after training)."""
    train, _ = loaders((12,))
    epochs = []
    with pytest.raises(ConfigError, match=r"enc\.weight is bfloat16, which a \.sws file cannot.*model\.float\(\)"):
        sws.compress(Tied().to(torch.bfloat16), train, epochs=1, on_epoch=epochs.append)
    with pytest.raises(ConfigError, match=r"enc\.weight, of dtype torch\.float16.*model\.float\(\)"):
        sws.compress(Tied().half(), train, epochs=1, on_epoch=epochs.append)
    net = Tied()
    net.register_buffer("mask", torch.ones(3, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"mask is bool, which a \.sws file cannot store.*persistent=False"):
        sws.compress(net, train, epochs=1, out=tmp_path / "m.sws", on_epoch=epochs.append)
    assert epochs == [] and not (tmp_path / "m.sws").exists()


def test_dense_path_matches_fused_kernel():
    """The path for tensors the C kernel cannot take (GPU, float64: dense, on the
    weights' device) gives the C kernel's gradients."""
    torch.manual_seed(2)
    grads = []
    for dense in (False, True):
        prior = GaussianMixturePrior(PriorConfig(n_components=8, init_sigma=0.1))
        ws = [torch.randn(300, 40).mul_(0.2), torch.randn(17)]
        ws = [(w.double() if dense else w).requires_grad_() for w in ws]
        for w in ws:
            w.grad = torch.ones_like(w)
        torch.manual_seed(2)
        c = prior.backward_complexity(ws, 0.01)
        grads.append((c, [w.grad.float().clone() for w in ws],
                      [p.grad.clone() for p in (prior.means, prior.log_precisions, prior.mixing_logits)]))
    (c0, w0, p0), (c1, w1, p1) = grads
    assert math.isclose(c0, c1, rel_tol=1e-5)
    for a, b in zip(w0 + p0, w1 + p1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bad_settings_raise_config_errors():
    train, _ = loaders((12,))
    with pytest.raises(ConfigError, match="covers no parameter"):
        sws.compress(Tied(), train, include=["nothing.*"], epochs=1)
    with pytest.raises(ConfigError):
        sws.compress(Tied(), train, config="no-such-preset")
    with pytest.raises(sws.DataError, match="map-style Dataset"):
        sws.compress(Tied(), iter([(torch.randn(4, 12), torch.zeros(4, dtype=torch.long))]), epochs=1)


def test_example_script_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("example", ROOT / "examples" / "compress_custom_model.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "custom.sws"
    report = example.main(["--out", str(out), "--n-train", "600", "--pretrain-epochs", "1",
                           "--epochs", "2", "--write-over-budget"])
    text = capsys.readouterr().out
    assert "outputs identical" in text and out.is_file()
    assert report.covered[0] == "features.0.bias" or "features.0.weight" not in report.covered

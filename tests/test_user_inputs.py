"""User networks and data from a sweep of ones not in the repository (thirteenth session): each
either works through ``sws.compress`` or is refused before training with a named error."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset, WeightedRandomSampler

import sws
from sws.errors import ConfigError, DataError


def data(n=96, width=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def mlp(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(12, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def test_a_scripted_model_compresses_with_the_budget_and_loads_back(tmp_path):
    """The budget's watch found the covered tensors with get_parameter, which a ScriptModule lacks."""
    train = data()
    net = torch.jit.script(mlp())
    with pytest.warns(sws.BudgetWarning, match="m.sws not written"):
        sws.compress(torch.jit.script(mlp()), train, train, epochs=1, batch_size=32, out=tmp_path / "m.sws")
    assert not (tmp_path / "m.sws").exists()            # over budget: no file unless asked for
    with pytest.warns(sws.BudgetWarning, match="no state met the accuracy budget"):
        model, report = sws.compress(net, train, train, epochs=1, batch_size=32, out=tmp_path / "m.sws",
                                     write_over_budget=True)
    assert report.budget["status"] == "over" and report.file["bytes"] == (tmp_path / "m.sws").stat().st_size
    back = sws.load(tmp_path / "m.sws", model=mlp(seed=1))
    x = train.tensors[0][:8]
    assert torch.allclose(back(x), model(x), atol=1e-6)


def test_an_embedding_with_max_norm_is_refused_before_training():
    """Its forward pass rescales rows in place, so the snapped weights would leave the codebook."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(30, 8, max_norm=1.0), nn.Flatten(), nn.Linear(8 * 4, 3))
    tokens = TensorDataset(torch.randint(0, 30, (64, 4)), torch.randint(0, 3, (64,)))
    seen = []
    with pytest.raises(ConfigError, match=r"0\.weight, an embedding with max_norm=1.*max_norm = None.*exclude"):
        sws.compress(net, tokens, epochs=1, on_epoch=seen.append)
    assert seen == []
    model, _ = sws.compress(net, tokens, epochs=1, batch_size=32, exclude=["0.weight"], budget=False)
    assert model is net


def test_a_data_loaders_drop_last_and_subset_sampler_are_kept():
    """drop_last=True leaves out a last batch of one (which batch-norm cannot train on); a
    SubsetRandomSampler's items are the training set; another sampler is refused."""
    full = data(n=257)
    loader = DataLoader(full, batch_size=128, drop_last=True)
    epochs = []
    sws.compress(mlp(bn=True), loader, epochs=1, budget=False, on_epoch=epochs.append)
    assert len(epochs) == 1
    with pytest.raises(DataError, match="leave a last batch of one item.*drop_last=True"):   # before training
        sws.compress(mlp(bn=True), DataLoader(full, batch_size=128), epochs=1, budget=False, on_epoch=epochs.append)
    assert len(epochs) == 1
    sub = DataLoader(full, batch_size=32, sampler=SubsetRandomSampler(range(50)))
    _, report = sws.compress(mlp(), sub, epochs=1, budget=False)
    assert report.config["n_train"] == 50
    weighted = DataLoader(full, batch_size=32, sampler=WeightedRandomSampler(torch.ones(257), 100))
    with pytest.raises(ConfigError, match="WeightedRandomSampler cannot be used.*Subset"):
        sws.compress(mlp(), weighted, epochs=1)
    with pytest.raises(DataError, match="make no full batch of 512"):
        sws.compress(mlp(), DataLoader(full, batch_size=512, drop_last=True), epochs=1, budget=False)


def test_bad_labels_and_losses_get_named_errors():
    train = data()
    x, y = train.tensors
    with pytest.raises(DataError, match=r"class label is 5, outside 0\.\.2 for scores with 3 classes"):
        sws.compress(mlp(), TensorDataset(x, torch.where(y == 2, 5, y)), epochs=1, batch_size=32)
    with pytest.raises(DataError, match=r"class label is -1"):
        sws.compress(mlp(), TensorDataset(x, y - 1), epochs=1, batch_size=32)
    with pytest.raises(DataError, match=r"class labels as integers, got torch\.float32.*\.long\(\)"):
        sws.compress(mlp(), TensorDataset(x, y.float()), epochs=1, batch_size=32)
    with pytest.raises(ConfigError, match=r"loss_fn must return the batch's mean loss as one number, got \(32,\)"):
        sws.compress(mlp(), train, epochs=1, batch_size=32, loss_fn=nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ConfigError, match="has no parameters"):
        sws.compress(nn.Sequential(nn.Flatten()), train, epochs=1)


def test_non_finite_data_or_weights_are_named_as_such():
    """Not a divergence blamed on the learning rates: the first batch's loss, before any update."""
    train = data()
    x, y = train.tensors
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(DataError, match="first training batch is nan, before any update.*isfinite"):
        sws.compress(mlp(), TensorDataset(bad, y), epochs=1, batch_size=96)
    net = mlp()
    with torch.no_grad():
        net[0].weight[0, 0] = float("inf")
    with pytest.raises(ConfigError, match=r"0\.weight holds non-finite values"):
        sws.compress(net, train, epochs=1)


def test_the_output_path_is_checked_before_training_and_never_replaced_unasked(tmp_path):
    train = data()
    seen = []
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ConfigError, match="f is a file, not a folder"):
        sws.compress(mlp(), train, epochs=1, out=tmp_path / "f" / "m.sws", on_epoch=seen.append)
    with pytest.raises(ConfigError, match="is a folder"):
        sws.compress(mlp(), train, epochs=1, out=tmp_path, on_epoch=seen.append)
    path = tmp_path / "m.sws"
    path.write_bytes(b"the user's file")
    with pytest.raises(ConfigError, match="exists: pass overwrite=True"):
        sws.compress(mlp(), train, epochs=1, out=path, on_epoch=seen.append)
    assert seen == [] and path.read_bytes() == b"the user's file"
    _, report = sws.compress(mlp(), train, epochs=1, batch_size=32, budget=False, out=path, overwrite=True)
    assert path.stat().st_size == report.file["bytes"]
    sws.compress(mlp(), train, epochs=1, batch_size=32, budget=False, out=tmp_path / "new" / "m.sws")
    assert (tmp_path / "new" / "m.sws").is_file()                 # a missing folder is made


def test_the_integrations_refuse_to_replace_a_file_when_training_begins(tmp_path):
    from sws.integrations._common import Driver
    path = tmp_path / "m.sws"
    path.write_bytes(b"the user's file")
    with pytest.raises(ConfigError, match="exists: pass overwrite=True"):
        Driver("tutorial", out=path).attach(mlp(), 96)
    assert path.read_bytes() == b"the user's file"
    Driver("tutorial", out=path, overwrite=True).attach(mlp(), 96)


def test_a_pruned_layer_is_refused_with_the_call_that_makes_it_permanent():
    """Its mask would be stored raw (32 bits a weight); after prune.remove it compresses."""
    net = mlp()
    nn.utils.prune.l1_unstructured(net[0], "weight", amount=0.5)
    with pytest.raises(ConfigError, match=r"0\.weight_orig, of a layer pruned.*prune\.remove\(model\.get_submodule"
                                          r"\('0'\), 'weight'\)"):
        sws.compress(net, data(), epochs=1)
    nn.utils.prune.remove(net[0], "weight")
    sws.compress(net, data(), epochs=1, batch_size=32, budget=False)


def test_non_finite_validation_data_is_named_before_training():
    train = data()
    x, y = train.tensors
    bad = x.clone()
    bad[0, 0] = float("inf")
    seen = []
    with pytest.raises(DataError, match="validation loss of the network as handed in is nan"):
        sws.compress(mlp(), train, TensorDataset(bad * 0, y), epochs=1, on_epoch=seen.append)
    assert seen == []


def test_a_small_training_set_gets_the_presets_number_of_steps(monkeypatch):
    """The presets' rates were set for MNIST's ~6,450 steps; in 30 epochs of 24 steps the mixture
    does not sharpen and every weight snaps to zero (a measured MLP: 89 % test error), so an epoch
    the user did not set takes as many passes over a small training set as reach the steps."""
    from sws.config import MIN_RETRAIN_STEPS, passes_per_epoch
    assert passes_per_epoch(30, 215) == 1                 # MNIST with 5,000 images held out: unchanged
    assert passes_per_epoch(30, 24) == 9 and 30 * 24 * 9 >= MIN_RETRAIN_STEPS
    seen = []
    _, report = sws.compress(mlp(), data(n=64), epochs=2, batch_size=32, budget=False, on_epoch=seen.append)
    assert len(seen) == 2 and report.config["passes_per_epoch"] == 1          # given epochs are kept
    monkeypatch.setattr("sws.config.MIN_RETRAIN_STEPS", 90)                   # 90 steps: a quick test
    steps = []
    net = mlp()
    net.register_forward_hook(lambda m, i, o: steps.append(m.training) if m.training else None)
    _, report = sws.compress(net, data(n=64), batch_size=48, budget=False, snap_epochs=0)
    assert report.config["passes_per_epoch"] == 2 and len(report.history) == 30
    assert len(steps) == 30 * 3                    # 128 items an epoch: batches of 48, 48 and 32

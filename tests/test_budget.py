"""Safe by default (issue 13): the post-processed network is watched during retraining and the
state kept is the best one within the accuracy budget; a wrecked result is never silent."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import sws
from sws.cli import main
from sws.method.watch import OVER_BUDGET_EXIT


def call(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def toy(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def mlp():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))


def pretrained(seed=0):
    torch.manual_seed(seed)
    model = mlp()
    sws.pretrain(model, toy(), sws.PretrainConfig(epochs=5, batch_size=64), quiet=True)
    return model


def test_a_wrecked_run_is_never_written_silently(tmp_path, capsys, mnist_dir):
    run = tmp_path / "run"
    code, out, err = call(capsys, "run", "--model", "lenet-300-100", "--out", run, "--data-dir", mnist_dir,
                          "--train-subset", "1000", "--pretrain-epochs", "1", "--epochs", "2", "--quiet")
    assert code == OVER_BUDGET_EXIT == 3, err
    line = [x for x in err.splitlines() if "no state met the accuracy budget" in x]
    assert len(line) == 1 and "pretrained" in line[0] and "points" in line[0]
    decision = json.loads((run / "metrics.json").read_text())["retrained"]["budget"]
    assert decision["status"] == "over" and decision["reference_val_error"] is not None
    assert (run / "model.sws").is_file()
    history = [r for r in json.loads((run / "history.json").read_text()) if r["stage"] == "retrain"]
    kept = min(history, key=lambda r: r["pp_val_error"])
    assert decision["epoch"] == kept["epoch"]


def test_the_kept_state_is_the_best_within_budget_not_the_last():
    model = pretrained()
    model, report = sws.compress(model, toy(), toy(seed=1), epochs=8, batch_size=64, tau=0.05,
                                 lr_weights=2e-3, lr_log_precisions=1e-2, lr_mixing=1e-2, init_sigma=0.05,
                                 max_error_increase=5.0, patience=0, finetune_epochs=0)
    rows = report.history
    assert all("pp_val_error" in r and "pp_cr" in r and "pp_nonzero_share" in r for r in rows)
    within = [r for r in rows if r["pp_within_budget"]]
    assert within, "no epoch within a 5-point budget: the test needs an easier setting"
    best = max(within, key=lambda r: r["pp_cr"])
    assert report.budget["status"] == "within" and report.budget["epoch"] == best["epoch"]
    # the returned network is that epoch's post-processed state
    assert report.metrics["quantized_error"] == pytest.approx(best["pp_val_error"], abs=1e-12)
    if best["epoch"] != rows[-1]["epoch"]:
        assert report.metrics["quantized_error"] != rows[-1]["pp_val_error"] or best["pp_cr"] != rows[-1]["pp_cr"]


def test_patience_stops_retraining_early():
    model = pretrained()
    _, report = sws.compress(model, toy(), toy(seed=1), epochs=30, batch_size=64, tau=0.05,
                             lr_weights=2e-3, lr_log_precisions=1e-2, lr_mixing=1e-2, init_sigma=0.05,
                             max_error_increase=100.0, patience=2, snap_epochs=0)
    assert len(report.history) < 30 and report.history[-1].get("stopped_early")
    assert report.history[-1]["epoch"] - report.budget["epoch"] == 2


def test_no_budget_leaves_the_bits_of_the_plain_loop():
    """Watching (a post-processed copy each epoch) changes nothing in the retraining itself."""
    start = {k: v.clone() for k, v in pretrained().state_dict().items()}
    a, b = mlp(), mlp()
    a.load_state_dict(start)
    b.load_state_dict(start)
    sws.compress(a, toy(), toy(seed=1), epochs=3, batch_size=64, budget=False)
    cfg = sws.retrain_config("tutorial", epochs=3, batch_size=64)
    prior = sws.GaussianMixturePrior(cfg.prior, list(b.parameters()))
    sws.retrain(b, prior, toy(), cfg, quiet=True)
    sws.quantize_(dict(b.named_parameters()), prior, 1e-2)
    from sws.method.deadunits import drop_dead_units
    drop_dead_units(b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_budget_state_survives_a_resume():
    model = pretrained()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(epochs=5, batch_size=64, tau=0.05, lr_weights=2e-3, lr_log_precisions=1e-2, lr_mixing=1e-2,
              init_sigma=0.05, max_error_increase=5.0, patience=0)
    ref, ref_report = sws.compress(model, toy(), toy(seed=1), **kw)
    states = []

    def stop_after_3(rec):
        if rec["epoch"] == 3:
            raise KeyboardInterrupt

    m = mlp()
    m.load_state_dict(start)
    with pytest.raises(KeyboardInterrupt):
        sws.compress(m, toy(), toy(seed=1), on_epoch=stop_after_3, on_state=lambda t, s: states.append((t, s)),
                     **kw)
    m = mlp()
    m.load_state_dict(start)
    got, report = sws.compress(m, toy(), toy(seed=1), resume=states[-1], **kw)
    assert report.budget["epoch"] == ref_report.budget["epoch"]
    assert all(torch.equal(x, y) for x, y in zip(ref.state_dict().values(), got.state_dict().values()))


def test_paper_preset_runs_three_epochs_without_the_guard_stopping_it(tmp_path, capsys, mnist_dir):
    run = tmp_path / "paper"
    code, _, err = call(capsys, "run", "--model", "lenet-300-100", "--out", run, "--data-dir", mnist_dir,
                        "--train-subset", "2000", "--pretrain-epochs", "2", "--preset", "paper", "--epochs", "3",
                        "--patience", "0", "--snap-epochs", "1", "--quiet")
    assert code in (0, OVER_BUDGET_EXIT), err
    assert "diverged" not in err
    history = [r for r in json.loads((run / "history.json").read_text()) if r["stage"] == "retrain"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and history[-1]["snap"]   # then one through the snap


def test_codebook_finetuning_keeps_the_pattern_and_lowers_the_loss(tmp_path):
    from sws.method.finetune import finetune_codebook_
    model = pretrained()
    model, report = sws.compress(model, toy(), toy(seed=1), epochs=3, batch_size=64, tau=0.05, init_sigma=0.05,
                                 lr_log_precisions=1e-2, lr_mixing=1e-2, budget=False)
    covered = {n: model.get_parameter(n) for n in report.covered}
    before = {n: p.detach().clone() for n, p in covered.items()}
    loss_before = sws.evaluate(model, toy())["loss"]
    codebook = finetune_codebook_(model, covered, torch.tensor(report.codebook), toy(), epochs=3, lr=1e-2,
                                  batch_size=64)
    assert codebook[0] == 0 and len(set(codebook.tolist())) == len(codebook)
    for n, p in covered.items():
        assert torch.equal(p.eq(0), before[n].eq(0))                # zeros stay zeros
        assert set(p.detach().unique().tolist()) <= set(codebook.tolist())
    assert sws.evaluate(model, toy())["loss"] < loss_before
    path = tmp_path / "f.sws"
    sws.save(path, model, codebook=codebook, quantized=list(covered))
    assert torch.equal(sws.load(path, model=mlp())(toy().tensors[0][:4]), model(toy().tensors[0][:4]))


def test_codebook_finetuning_with_a_validation_set_never_leaves_it_worse():
    """A learning rate that wrecks the codebook: the values before fine-tuning are kept."""
    from sws.method.finetune import finetune_codebook_
    model = pretrained()
    model, report = sws.compress(model, toy(), toy(seed=1), epochs=3, batch_size=64, tau=0.05, init_sigma=0.05,
                                 lr_log_precisions=1e-2, lr_mixing=1e-2, budget=False)
    covered = {n: model.get_parameter(n) for n in report.covered}
    codebook = torch.tensor(report.codebook)
    val = toy(seed=1)
    before = sws.evaluate(model, val)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    wild = finetune_codebook_(model, covered, codebook, toy(), epochs=2, lr=10.0, batch_size=64)
    assert sws.evaluate(model, val)["error"] > before["error"]      # unguarded: worse
    model.load_state_dict(state)
    kept = finetune_codebook_(model, covered, codebook, toy(), epochs=2, lr=10.0, batch_size=64, val=val)
    after = sws.evaluate(model, val)
    assert (after["error"], after["loss"]) <= (before["error"], before["loss"])
    assert not torch.equal(wild, kept)


def test_watching_every_k_steps_keeps_the_best_watch_within_epochs(tmp_path):
    """toy(): 512 images, batch 64: 8 steps an epoch, watched after steps 3 and 6 and at the end."""
    model = pretrained()
    model, report = sws.compress(model, toy(), toy(seed=1), epochs=4, batch_size=64, tau=0.05,
                                 lr_weights=2e-3, lr_log_precisions=1e-2, lr_mixing=1e-2, init_sigma=0.05,
                                 max_error_increase=5.0, patience=0, finetune_epochs=0, watch_every=3,
                                 snap_epochs=2)
    rows = report.history
    watches = [w for r in rows for w in [*r.get("watches", ()), r]]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [bool(w.get("snap")) for w in watches] == [False] * 12 + [True] * 6   # the snap phase: 5, 6
    assert [round(w["epoch"], 3) for w in watches[:3]] == [0.375, 0.75, 1]
    assert all("pp_val_error" in w and "val_error" in w for w in watches)
    within = [w for w in watches if w["pp_within_budget"]]
    best = max(within, key=lambda w: w["pp_cr"])
    assert report.budget["epoch"] == best["epoch"]
    assert report.metrics["quantized_error"] == pytest.approx(best["pp_val_error"], abs=1e-12)


def test_watch_every_with_patience_stops_within_an_epoch():
    model = pretrained()
    _, report = sws.compress(model, toy(), toy(seed=1), epochs=30, batch_size=64, tau=0.05,
                             lr_weights=2e-3, lr_log_precisions=1e-2, lr_mixing=1e-2, init_sigma=0.05,
                             max_error_increase=100.0, patience=2, watch_every=2)
    assert len(report.history) < 30 and report.history[-1].get("stopped_early")


def test_watch_every_from_the_cli(tmp_path, capsys, mnist_dir):
    run = tmp_path / "run"
    code, out, err = call(capsys, "run", "--model", "lenet-300-100", "--out", run, "--data-dir", mnist_dir,
                          "--train-subset", "1000", "--val-size", "200", "--pretrain-epochs", "1", "--epochs", "1",
                          "--watch-every", "1", "--quiet")
    assert code in (0, OVER_BUDGET_EXIT), err
    history = [r for r in json.loads((run / "history.json").read_text()) if r["stage"] == "retrain"]
    assert len(history[0]["watches"]) == 3            # 800 images, batch 256: 4 steps, 3 within
    code, _, err = call(capsys, "run", "--model", "lenet-300-100", "--out", tmp_path / "r2", "--watch-every", "-1")
    assert code == 2 and "watch_every" in err

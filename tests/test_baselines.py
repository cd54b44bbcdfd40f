"""Deep Compression and the pruning + k-means floor (sws.study.baselines), and benchmarks/table1.py."""

from pathlib import Path

import numpy as np
import pytest
import torch

import sws
from sws.format import container as fileformat
from sws.study.baselines import (DeepCompressionConfig, apply_masks, deep_compression, finetune_centroids, kmeans_1d,
                           keep_rates, magnitude_masks, prune_and_quantize, save_baseline,
                           share_weights, weight_names)
from sws.zoo.mnist import Dataset
from sws.zoo.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def _tiny_data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def _distinct_nonzero(t):
    return int(torch.unique(t[t != 0]).numel())


def test_magnitude_pruning_keeps_the_requested_share_of_largest_weights():
    g = torch.Generator().manual_seed(1)
    weights = {"a": torch.randn(300, 784, generator=g), "b": torch.randn(20, 1, 5, 5, generator=g)}
    keep = {"a": 0.08, "b": 0.66}
    masks = magnitude_masks(weights, keep)
    for name, w in weights.items():
        assert int(masks[name].sum()) == round(keep[name] * w.numel())
        assert w[masks[name]].abs().min() >= w[~masks[name]].abs().max()


def test_han_keep_rates_name_every_weight_tensor():
    net = build_model("lenet-5-caffe")
    assert keep_rates(net, "lenet-5-caffe") == dict(zip(weight_names(net), (0.66, 0.12, 0.08, 0.19)))
    net = build_model("lenet-300-100")
    assert list(keep_rates(net, "lenet-300-100").values()) == [0.08, 0.09, 0.26]


def test_kmeans_linear_init_converges_to_cluster_means():
    x = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)])
    c, labels = kmeans_1d(x, 3)
    assert torch.allclose(c, torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64))
    assert torch.equal(c[labels].float(), x)


def test_sharing_and_finetuning_keep_the_values_per_layer_and_the_zeros():
    net = build_model("lenet-300-100", seed=0)
    names = weight_names(net)
    masks = magnitude_masks({n: net.get_parameter(n) for n in names}, keep_rates(net, "lenet-300-100"))
    apply_masks(net, masks)
    shared = share_weights(net, masks, DeepCompressionConfig(clusters_fc=32))
    before = {n: net.get_parameter(n).detach().clone() for n in names}
    for n in names:
        assert torch.equal(before[n] != 0, masks[n])
        assert _distinct_nonzero(before[n]) == 32 == shared[n].centroids.numel()
    finetune_centroids(net, shared, _tiny_data(), epochs=2, lr=1e-2, batch_size=32)
    for n in names:
        after = net.get_parameter(n).detach()
        assert torch.equal(after != 0, masks[n])                  # pruned weights stay zero
        assert _distinct_nonzero(after) == 32                     # still 32 shared values
        assert not torch.equal(after, before[n])                  # the centroids did move
        # weights that shared a value before still share one
        idx = shared[n].index[masks[n]]
        assert torch.equal(after[masks[n]], shared[n].centroids.detach()[idx])


def test_floor_prunes_and_quantizes_without_training():
    net = build_model("lenet-300-100", seed=0)
    info = prune_and_quantize(net, "lenet-300-100", DeepCompressionConfig(clusters_fc=16))
    for n, keep in info["keep"].items():
        w = net.get_parameter(n)
        assert int(torch.count_nonzero(w)) == round(keep * w.numel())
        assert _distinct_nonzero(w) <= 16


def test_written_file_decodes_to_the_baseline_weights_bit_for_bit(tmp_path):
    net = build_model("lenet-5-caffe", "standardize", seed=0)
    prune_and_quantize(net, "lenet-5-caffe", DeepCompressionConfig(clusters_conv=8, clusters_fc=16))
    size = save_baseline(tmp_path / "dc.sws", net, "lenet-5-caffe", "standardize")
    assert size == (tmp_path / "dc.sws").stat().st_size
    decoded = fileformat.read(tmp_path / "dc.sws")
    state = net.state_dict()
    assert list(decoded.tensors) == list(state)
    for name, t in state.items():
        assert np.array_equal(decoded.tensors[name].numpy().view(np.uint32), t.numpy().view(np.uint32))
    assert decoded.codebook[0] == 0 and len(decoded.codebook) <= 1 + 2 * 8 + 2 * 16
    loaded = sws.load(tmp_path / "dc.sws")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), net.eval()(x))


def test_deep_compression_prunes_to_han_rates_and_resumes(tmp_path):
    data = _tiny_data(64)
    cfg = DeepCompressionConfig(prune_steps=2, epochs_per_step=1, finetune_epochs=1, clusters_fc=16)
    net = build_model("lenet-300-100", seed=0)
    logs = []
    info = deep_compression(net, "lenet-300-100", data, cfg, tmp_path, log=logs.append)
    for name, keep in info["keep"].items():
        w = net.get_parameter(name)
        assert int(torch.count_nonzero(w)) == round(keep * w.numel())
        assert _distinct_nonzero(w) <= 16
    assert (tmp_path / "prune-2.safetensors").is_file()
    again = build_model("lenet-300-100", seed=0)
    logs.clear()
    deep_compression(again, "lenet-300-100", data, cfg, tmp_path, log=logs.append)
    assert all("resumed" in line for line in logs)
    for name in info["keep"]:
        assert torch.equal(again.get_parameter(name), net.get_parameter(name))


def _table1():
    import sws.study.table1 as table1
    return table1


def test_results_section_is_replaced_and_other_sections_kept(tmp_path):
    t1 = _table1()
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Other (issue 5)\n\nkeep me\n")
    t1.write_section(path, t1.SECTION + "\n\nfirst\n")
    t1.write_section(path, t1.SECTION + "\n\nsecond\n")
    text = path.read_text()
    assert "keep me" in text and "second" in text and "first" not in text
    assert text.count(t1.SECTION) == 1
    path.write_text(text + "\n## Later (issue 6)\n\nalso kept\n")
    t1.write_section(path, t1.SECTION + "\n\nthird\n")
    text = path.read_text()
    assert "third" in text and "second" not in text and "also kept" in text and "keep me" in text


def test_table1_extra_variant_runs_once_whether_or_not_variants_names_it():
    t1 = _table1()
    extra = ["--variant", "mine=tutorial,tau=0.01,lr_schedule=cosine"]
    assert t1.parse_args(extra).variants == [*t1.DEFAULT_VARIANTS, "mine"]
    args = t1.parse_args(["--variants", "lenet-5-caffe:mine", *extra])
    assert args.variants == ["lenet-5-caffe:mine"]
    assert args.specs["mine"] == ("tutorial", {"tau": 0.01, "lr_schedule": "cosine"})


@pytest.mark.slow
def test_table1_quick_writes_the_markdown_table_and_files(tmp_path, mnist_dir):
    t1 = _table1()
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n## Figures (issue 5)\n\nother\n")
    argv = ["--quick", "--train-subset", "600", "--val-size", "100", "--variants", "tutorial",
            "--data-dir", str(mnist_dir), "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "out"), "--results", str(results)]
    assert t1.main(argv) == 0
    text = results.read_text()
    assert "## Figures (issue 5)" in text and "## Table 1 (issue 4)" in text
    rows = [line for line in text.splitlines() if line.startswith("| LeNet-300-100")]
    assert len(rows) == 3 + 1 + 3      # the paper's three rows, a later method's; tutorial, Deep Compression, floor
    for name in ("lenet-300-100-sws-tutorial.sws", "lenet-300-100-deep-compression.sws",
                 "lenet-300-100-prune-kmeans.sws"):
        assert fileformat.read(tmp_path / "out" / name).codebook[0] == 0
    # a second run reuses every stage (resume) and writes the same table
    stamp = (tmp_path / "out" / "results.json").stat().st_mtime
    assert t1.main(argv) == 0
    assert (tmp_path / "out" / "results.json").stat().st_mtime >= stamp
    assert rows == [line for line in results.read_text().splitlines()
                    if line.startswith("| LeNet-300-100")]


def test_table1_chooses_on_both_validation_errors_never_on_test():
    from sws.study.table1_report import choose_on_validation, settled_val_error

    history = [{"stage": "pretrain", "val_error": 0.5}] + [
        {"stage": "retrain", "pp_val_error": e} for e in (0.9, 0.02, 0.011, 0.012, 0.009, 0.010, 0.011)]
    assert settled_val_error(history) == pytest.approx((0.011 + 0.012 + 0.009 + 0.010 + 0.011) / 5)
    assert settled_val_error([{"stage": "retrain", "val_error": 0.01}]) is None

    def row(cr, val, settled, test):
        return {"model": "lenet-5-caffe", "method": "soft weight-sharing", "cr_file": cr, "val_error": val,
                "settled_val_error": settled, "test_error": test}
    edge = row(560, 0.0100, 0.0104, 0.002)       # its kept state at the limit, the run above it
    settled = row(500, 0.0082, 0.0090, 0.05)     # test errors never count
    older = row(530, 0.0098, None, 0.0)          # no history recorded: its own validation error
    assert choose_on_validation([edge, settled], "lenet-5-caffe") is settled
    assert choose_on_validation([edge, settled, older], "lenet-5-caffe") is older
    over = row(700, 0.0110, 0.0105, 0.0)
    assert choose_on_validation([over, edge], "lenet-5-caffe") is edge   # none within: the lowest


def test_table1_chooses_on_the_holdout_where_rows_have_one():
    """Rows scored on a holdout (items no choice of their run saw) are chosen on it alone."""
    from sws.study.table1_report import choose_on_validation

    def row(cr, val, holdout=None, test=0.0):
        r = {"model": "lenet-5-caffe", "method": "soft weight-sharing", "cr_file": cr, "val_error": val,
             "settled_val_error": val, "test_error": test}
        return r | ({"holdout_error": holdout} if holdout is not None else {})
    old = row(900, 0.0050)                         # no holdout: not a candidate beside holdout rows
    lucky = row(600, 0.0080, holdout=0.0112)        # within on validation, over on the holdout
    honest = row(500, 0.0105, holdout=0.0096, test=0.5)   # over on validation, within on the holdout
    assert choose_on_validation([old, lucky, honest], "lenet-5-caffe") is honest
    assert choose_on_validation([old, lucky], "lenet-5-caffe") is lucky   # none within: the lowest holdout
    assert choose_on_validation([old], "lenet-5-caffe") is old


def test_table1_target_is_not_met_by_a_fallback_choice(tmp_path):
    """A row chosen only because none met the target where rows are chosen is no target met,
    whatever its test error."""
    import argparse

    from sws.study.table1_report import chosen_within, markdown
    row = {"model": "lenet-5-caffe", "method": "soft weight-sharing", "variant": "v", "preset": "tutorial",
           "overrides": {}, "retrain_epochs": 1, "cr_file": 500.0, "cr_paper": 300.0, "val_error": 0.008,
           "settled_val_error": 0.008, "holdout_error": 0.0118, "test_error": 0.0095, "nonzero_share": 0.01,
           "pretrained_test_error": 0.005, "file_bytes": 3000, "seconds": 1.0}
    assert not chosen_within([row], "lenet-5-caffe")
    args = argparse.Namespace(argv=[], data_dir=None, val_size=5000, models=["lenet-5-caffe"], out=tmp_path)
    text = markdown([row], args, 0.0)
    assert "CR >= 400 at test error <= 1.0%: missed (no row meets the target on holdout" in text
    assert chosen_within([row | {"holdout_error": 0.0098}], "lenet-5-caffe")
    assert "1.0%: met (v: CR 500.0" in markdown([row | {"holdout_error": 0.0098}], args, 0.0)


@pytest.mark.slow
def test_table1_with_a_holdout_scores_every_row_on_it(tmp_path, mnist_dir):
    import json
    t1 = _table1()
    argv = ["--quick", "--train-subset", "600", "--val-size", "100", "--holdout-size", "100",
            "--variants", "tutorial", "--data-dir", str(mnist_dir), "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "out"), "--results", str(tmp_path / "RESULTS.md")]
    assert t1.main(argv) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert len(rows) == 3 and all(0 <= r["holdout_error"] <= 1 for r in rows)
    assert "| holdout % |" in (tmp_path / "out" / "TABLE1.md").read_text()

"""PyTorch Lightning: a small BERT and a small ResNet built from configs (no download) retrain with
the prior under ``lightning.Trainer``, log it, end quantised, write a .sws file that loads back, and
a checkpoint carries the prior."""

import csv
import math

import pytest
import torch

L = pytest.importorskip("lightning")
transformers = pytest.importorskip("transformers")

import sws  # noqa: E402
from sws.integrations.lightning import SoftWeightSharingCallback  # noqa: E402

VOCAB, SEQ = 40, 12


def tokens(n, seed):
    """Label 1 when token 3 occurs in the sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, SEQ), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    pos = torch.randint(0, SEQ, (n,), generator=g)
    ids[flip, pos[flip]] = 3
    return [{"input_ids": ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": flip[i].long()}
            for i in range(n)]


def images(n, seed):
    """(image, class) pairs: a bright row, column or diagonal on 1x16x16 noise."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    for i, c in enumerate(y.tolist()):
        k = int(torch.randint(2, 14, (1,), generator=g))
        if c == 0:
            x[i, 0, k, :] = 1.0
        elif c == 1:
            x[i, 0, :, k] = 1.0
        else:
            x[i, 0].fill_diagonal_(1.0)
    return torch.utils.data.TensorDataset(x, y)


def bert():
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=SEQ, num_labels=2))


def resnet():
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3,
        downsample_in_first_stage=False))


class Lit(L.LightningModule):
    """A Hugging Face model under Lightning: dict batches (BERT) or (image, label) pairs (ResNet)."""

    def __init__(self, net, lr=3e-3):
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x):
        return self.net(**x).logits if isinstance(x, dict) else self.net(x).logits

    def _loss(self, batch):
        if isinstance(batch, dict):
            batch = dict(batch)
            y = batch.pop("labels")
            return self(batch), y
        x, y = batch
        return self(x), y

    def training_step(self, batch, i):
        logits, y = self._loss(batch)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, i):
        logits, y = self._loss(batch)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)}


def trainer(tmp_path, cb, epochs=2, **kw):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[cb], log_every_n_steps=1,
                     logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"), enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, **kw)


def loader(data, shuffle=False):
    return torch.utils.data.DataLoader(data, batch_size=32, shuffle=shuffle)


def logged(t):
    with open(t.logger.experiment.metrics_file_path) as f:
        return list(csv.DictReader(f))


def check_quantized(cb):
    codebook = set(cb.sws.quantized.codebook.tolist())
    for name, p in cb.sws.covered.items():
        assert set(torch.unique(p.detach()).tolist()) <= codebook, name
    assert cb.result["sws/nonzero_share"] < 1.0 and cb.result["sws/file_bytes"] > 0


def test_bert_under_lightning_logs_quantizes_and_writes(tmp_path):
    torch.manual_seed(0)
    lit = Lit(bert())
    out = tmp_path / "bert.sws"
    cb = SoftWeightSharingCallback("tutorial", out=out, module="net", init="range", tau=0.01)
    t = trainer(tmp_path, cb)
    train, val = tokens(256, 0), tokens(128, 1)
    t.fit(lit, loader(train, True), loader(val))

    rows = logged(t)
    steps = [r for r in rows if r.get("sws/complexity")]
    assert len(steps) == t.global_step and all(math.isfinite(float(r["sws/complexity"])) for r in steps)
    assert all(r["sws/pi0"] and r["sws/sd0"] for r in steps)
    assert any(r.get("sws/file_bytes") for r in rows)            # the end's numbers reach the logger
    assert cb.sws.n_train == 256 and cb.sws.steps_done == t.global_step
    assert "bert.embeddings.word_embeddings.weight" in cb.sws.covered    # names relative to module="net"
    check_quantized(cb)
    # validation set: Lightning validates the quantised network
    metrics = t.validate(lit, loader(val), verbose=False)[0]
    assert math.isfinite(metrics["val_loss"])

    fresh = sws.load(out, model=bert())
    batch = torch.utils.data.default_collate(val[:16])
    batch.pop("labels")
    lit.eval()
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, lit.net(**batch).logits)


def test_resnet_under_lightning_recalibrates_and_loads_into_the_module(tmp_path):
    torch.manual_seed(0)
    lit = Lit(resnet())
    out = tmp_path / "resnet.sws"
    cb = SoftWeightSharingCallback("tutorial", out=out, init="range")
    t = trainer(tmp_path, cb, accumulate_grad_batches=2)
    t.fit(lit, loader(images(192, 0), True), loader(images(96, 1)))
    assert cb.sws.steps_done == t.global_step == 6          # 6 batches an epoch, 2 per step, 2 epochs
    assert all(n.startswith("net.") for n in cb.sws.covered)
    check_quantized(cb)
    assert cb.result["sws/recalibrated"] is True
    assert math.isfinite(t.validate(lit, loader(images(96, 1)), verbose=False)[0]["val_loss"])

    fresh = sws.load(out, model=Lit(resnet()))
    x = images(8, 2).tensors[0]
    lit.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), lit(x))


def test_lightning_checkpoint_carries_the_prior(tmp_path):
    torch.manual_seed(0)
    train = loader(tokens(128, 0))
    a = SoftWeightSharingCallback("tutorial", module="net", init="range")
    t = trainer(tmp_path, a, epochs=1)
    t.fit(Lit(bert()), train)
    t.save_checkpoint(tmp_path / "a.ckpt")
    means = a.sws.prior.means.detach().clone()

    b = SoftWeightSharingCallback("tutorial", module="net", init="range")
    seen = {}

    class Peek(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("means", b.sws.prior.means.detach().clone())

    t2 = L.Trainer(max_epochs=2, accelerator="cpu", callbacks=[b, Peek()], logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False)
    t2.fit(Lit(bert()), train, ckpt_path=tmp_path / "a.ckpt")
    assert torch.equal(seen["means"], means)
    assert b.sws.steps_done == t2.global_step == 8


def test_distill_is_refused_under_a_framework():
    # the framework owns the loss: a distill weight would be silently ignored
    with pytest.raises(sws.ConfigError, match="distill is for sws's own training loop"):
        SoftWeightSharingCallback("tutorial", distill=0.5)
    with pytest.raises(sws.ConfigError, match="augment is for sws's own training loop"):
        SoftWeightSharingCallback("tutorial", augment="shift:2")


class Blobs(L.LightningModule):
    """A small MLP on two Gaussian blobs: trained to no validation error in a few epochs."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, i):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    return torch.utils.data.TensorDataset(torch.randn(n, 8, generator=g) + 1.5 * (2 * y[:, None].float() - 1), y)


def test_the_guard_keeps_a_wrecked_network_out_of_the_file(tmp_path):
    """All components merged into the zero one: every weight 0.  The guard's data given as
    ``val=`` (no validation loop in the Trainer)."""
    torch.manual_seed(0)
    lit = Blobs()
    out = tmp_path / "blobs.sws"
    val = blobs(128, 1)
    cb = SoftWeightSharingCallback("tutorial", out=out, merge_threshold=1e9, val=val)
    t = trainer(tmp_path, cb, epochs=4)
    with pytest.warns(UserWarning, match="no file written, the model keeps its trained weights"):
        t.fit(lit, loader(blobs(256, 0), True))
    assert cb.result["sws/status"] == "over" and not out.exists()
    assert cb.result["sws/val_error_trained"] < 0.1 and cb.result["sws/val_error"] > 0.3
    x, y = val.tensors
    lit.eval()
    with torch.no_grad():
        assert (lit(x).argmax(-1) != y).float().mean().item() == pytest.approx(cb.result["sws/val_error_trained"])
    # no validation data anywhere: the file is written, with a warning that it was not checked
    torch.manual_seed(0)
    unchecked = SoftWeightSharingCallback("tutorial", out=out, merge_threshold=1e9)
    with pytest.warns(UserWarning, match="not validated"):
        trainer(tmp_path, unchecked, epochs=1).fit(Blobs(), loader(blobs(256, 0), True))
    assert unchecked.result["sws/status"] == "unchecked" and out.is_file()
    # validation batches the model cannot take: named in the warning, the file still written
    mappings = [{"features": x, "labels": y} for x, y in blobs(64, 1)]
    odd = SoftWeightSharingCallback("tutorial", out=tmp_path / "odd.sws", val=mappings)
    with pytest.warns(UserWarning, match=r"not validated \(the model cannot score the validation batches "
                                         r"\(TypeError"):
        trainer(tmp_path, odd, epochs=1).fit(Blobs(), loader(blobs(256, 0), True))
    assert odd.result["sws/status"] == "unchecked" and (tmp_path / "odd.sws").is_file()

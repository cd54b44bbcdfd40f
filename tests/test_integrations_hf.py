"""Hugging Face Trainer: a small BERT and a small ResNet built from configs (no download) retrain
with the prior, log it, end quantised, and the .sws file loads back into the same architecture."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import sws  # noqa: E402
from sws.integrations.huggingface import (STATE_FILE, SoftWeightSharingCallback,  # noqa: E402
                                          SoftWeightSharingTrainer)

VOCAB, SEQ = 40, 12


class Tokens(torch.utils.data.Dataset):
    """Label 1 when token 3 occurs in the sequence: learnable in a few steps."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(4, VOCAB, (n, SEQ), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        pos = torch.randint(0, SEQ, (n,), generator=g)
        self.ids[flip, pos[flip]] = 3
        self.labels = flip.long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": self.labels[i]}


class Images(torch.utils.data.Dataset):
    """Three classes of 1x16x16 images: a bright row, column or diagonal."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = 0.3 * torch.rand(n, 1, 16, 16, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)
        for i, c in enumerate(self.y.tolist()):
            k = int(torch.randint(2, 14, (1,), generator=g))
            if c == 0:
                self.x[i, 0, k, :] = 1.0
            elif c == 1:
                self.x[i, 0, :, k] = 1.0
            else:
                self.x[i, 0].fill_diagonal_(1.0)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def bert_config():
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=SEQ, num_labels=2)


def resnet_config():
    return transformers.ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                     layer_type="basic", num_labels=3, downsample_in_first_stage=False)


def accuracy(p):
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def args(tmp_path, epochs, **kw):
    kw = {"eval_strategy": "epoch", "save_strategy": "no", **kw}
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), num_train_epochs=epochs, per_device_train_batch_size=32,
        per_device_eval_batch_size=64, learning_rate=3e-3, logging_steps=2, report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0, dataloader_num_workers=0, **kw)


def check_quantized(cb, model):
    """Every covered tensor holds codebook values only, and the file says so too."""
    codebook = set(cb.sws.quantized.codebook.tolist())
    for name, p in cb.sws.covered.items():
        assert set(torch.unique(p.detach()).tolist()) <= codebook, name
    assert cb.result["sws/nonzero_share"] < 1.0 and cb.result["sws/file_bytes"] > 0


def same_outputs(a, b, inputs):
    a.eval(), b.eval()
    with torch.no_grad():
        return torch.equal(a(**inputs).logits, b(**inputs).logits)


def test_bert_trainer_callback_logs_quantizes_and_writes(tmp_path):
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(bert_config())
    train, val = Tokens(256, 0), Tokens(128, 1)
    out = tmp_path / "bert.sws"
    cb = SoftWeightSharingCallback("tutorial", out=out, init="range", tau=0.01)
    trainer = transformers.Trainer(model=model, args=args(tmp_path, 2), train_dataset=train, eval_dataset=val,
                                   compute_metrics=accuracy, callbacks=[cb])
    trainer.train()

    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert logs and all("sws/complexity" in r and "sws/pi0" in r and "sws/sd0" in r for r in logs)
    assert all(math.isfinite(r["sws/complexity"]) for r in logs)
    assert cb.sws.n_train == 256 and cb.sws.steps_done == trainer.state.global_step
    # the embeddings and the dense layers are covered, the layer norms are not
    assert "bert.embeddings.word_embeddings.weight" in cb.sws.covered
    assert not any("LayerNorm" in n for n in cb.sws.covered)
    check_quantized(cb, model)
    assert trainer.state.log_history[-1]["sws/path"] == str(out)
    # the guard checked the file's network on the evaluation set against the trained one
    assert cb.result["sws/status"] == "within"
    assert cb.result["sws/val_error"] <= cb.result["sws/val_error_trained"] + 0.003
    # validation set: the Trainer evaluates the quantised network
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_accuracy"] <= 1.0

    fresh = sws.load(out, model=transformers.BertForSequenceClassification(bert_config()))
    batch = torch.utils.data.default_collate([val[i] for i in range(16)])
    batch.pop("labels")
    assert same_outputs(fresh, trainer.model, batch)


def test_resnet_trainer_subclass_recalibrates_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(resnet_config())
    train, val = Images(192, 0), Images(96, 1)
    out = tmp_path / "resnet.sws"
    seen = []

    class Spy(transformers.TrainerCallback):   # a reporter that runs before sws's callback
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    # two epochs on 192 images leave the net near chance, so its error says nothing: the guard is
    # tested on a trained net below
    cb = SoftWeightSharingCallback("tutorial", out=out, init="range", exclude=["classifier.*"],
                                   max_error_increase=100.0)
    trainer = SoftWeightSharingTrainer(model=model, args=args(tmp_path, 2), train_dataset=train,
                                       eval_dataset=val, compute_metrics=accuracy, callbacks=[Spy()], sws=cb)
    assert trainer.callback_handler.callbacks.index(cb) > 1
    trainer.train()
    assert any("sws/complexity" in r for r in seen if "loss" in r)
    assert not any(n.startswith("classifier") for n in cb.sws.covered)
    assert not any("normalization" in n for n in cb.sws.covered)
    check_quantized(cb, model)
    assert cb.result["sws/recalibrated"] is True
    assert math.isfinite(trainer.evaluate()["eval_loss"])

    fresh = sws.load(out, model=transformers.ResNetForImageClassification(resnet_config()))
    x = torch.stack([val[i]["pixel_values"] for i in range(8)])
    assert same_outputs(fresh, trainer.model, {"pixel_values": x})


def test_trainer_checkpoint_keeps_the_prior(tmp_path):
    """A resumed Trainer run continues the mixture where the checkpoint left it."""
    torch.manual_seed(0)
    train = Tokens(128, 0)
    kw = dict(save_strategy="steps", save_steps=4, eval_strategy="no")
    a = SoftWeightSharingCallback("tutorial", init="range")
    t = transformers.Trainer(model=transformers.BertForSequenceClassification(bert_config()),
                             args=args(tmp_path, 2, max_steps=4, **kw), train_dataset=train, callbacks=[a])
    t.train()
    ckpt = tmp_path / "hf" / "checkpoint-4"
    saved = torch.load(ckpt / STATE_FILE, weights_only=True)
    assert saved["steps_done"] == 4

    b = SoftWeightSharingCallback("tutorial", init="range")
    t2 = transformers.Trainer(model=transformers.BertForSequenceClassification(bert_config()),
                              args=args(tmp_path, 2, max_steps=6, **kw), train_dataset=train, callbacks=[b])
    seen = {}

    class Peek(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not seen:
                seen["means"] = b.sws.prior.means.detach().clone()
    t2.add_callback(Peek())
    t2.train(resume_from_checkpoint=str(ckpt))
    assert torch.equal(seen["means"], saved["prior"]["means"])
    assert b.sws.steps_done == 6


class Blobs(torch.utils.data.Dataset):
    """Two Gaussian blobs in 8 dimensions: a small MLP separates them in a few steps."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 8, generator=g) + 1.5 * (2 * self.y[:, None].float() - 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Mlp(torch.nn.Module):
    """A model as the Trainer takes one: keyword inputs, the loss and the logits out."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def test_a_file_that_post_processing_wrecked_is_not_written(tmp_path):
    """Every component merged into the zero one: all weights 0. The Trainer subclass hands its
    evaluation set to the guard even without evaluations during training."""
    torch.manual_seed(0)
    model = Mlp()
    train, val = Blobs(256, 0), Blobs(128, 1)
    out = tmp_path / "mlp.sws"
    out.write_bytes(b"the user's earlier file")
    cb = SoftWeightSharingCallback("tutorial", out=out, merge_threshold=1e9, overwrite=True)
    trainer = SoftWeightSharingTrainer(model=model, args=args(tmp_path, 4, eval_strategy="no"),
                                       train_dataset=train, eval_dataset=val, compute_metrics=accuracy, sws=cb)
    with pytest.warns(UserWarning, match="post-processing raised the validation error .* no file written"):
        trainer.train()
    assert cb.result["sws/status"] == "over" and "sws/path" not in cb.result
    assert out.read_bytes() == b"the user's earlier file"
    # the model keeps its trained weights: it scores what it scored before post-processing
    assert cb.result["sws/val_error_trained"] < 0.1 and cb.result["sws/val_error"] > 0.3
    acc = trainer.evaluate()["eval_accuracy"]
    assert acc == pytest.approx(1 - cb.result["sws/val_error_trained"])
    assert all(p.detach().abs().sum() > 0 for p in cb.sws.covered.values())

"""Soft weight-sharing inside the Hugging Face Trainer: a small BERT, built from a config (no
download), fine-tuned on a synthetic keyword task, then retrained with the mixture prior by
``SoftWeightSharingCallback``, quantised and written as a .sws file that loads back into the same
architecture (and, with --onnx, exported for ONNX Runtime).

    .venv/bin/python examples/huggingface_trainer.py --out bert.sws
    .venv/bin/python examples/huggingface_trainer.py --out bert.sws --onnx bert.onnx

Needs ``pip install 'sws[huggingface]'`` (and ``sws[onnx]`` for --onnx).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import transformers

import sws
from sws.integrations.huggingface import SoftWeightSharingCallback, SoftWeightSharingTrainer

VOCAB, SEQ = 100, 24


class Keywords(torch.utils.data.Dataset):
    """Label 1 when one of the tokens 3, 4, 5 occurs in the sequence."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(6, VOCAB, (n, SEQ), generator=g)
        self.labels = (torch.rand(n, generator=g) < 0.5).long()
        pos = torch.randint(0, SEQ, (n,), generator=g)
        key = torch.randint(3, 6, (n,), generator=g)
        hit = self.labels.bool()
        self.ids[hit, pos[hit]] = key[hit]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": self.labels[i]}


def config():
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=128, max_position_embeddings=SEQ, num_labels=2)


def accuracy(p):
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def arguments(folder, epochs, lr):
    return transformers.TrainingArguments(
        output_dir=folder, num_train_epochs=epochs, learning_rate=lr, per_device_train_batch_size=64,
        per_device_eval_batch_size=256, eval_strategy="epoch", save_strategy="no", logging_steps=20,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, lr_scheduler_type="constant")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bert.sws", help="the .sws file to write")
    ap.add_argument("--onnx", default=None, help="also export the quantised network as ONNX (gather graph)")
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8, help="retraining epochs with the prior")
    ap.add_argument("--tau", type=float, default=0.003)
    args = ap.parse_args()
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    train, val = Keywords(2000, 0), Keywords(500, 1)
    model = transformers.BertForSequenceClassification(config())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        pre = transformers.Trainer(model=model, args=arguments(folder, args.pretrain_epochs, 1e-3),
                                   train_dataset=train, eval_dataset=val, compute_metrics=accuracy)
        out_pre = pre.train()
        acc_pre = pre.evaluate()["eval_accuracy"]
        # The tutorial's hyper-priors expect the LeNets' weights; a transformer's are about 5x
        # smaller (std 0.03 here), so the components start narrower (init_sigma) and the Gamma
        # hyper-priors' betas are 10x smaller (expected sd 0.006 instead of 0.02).  Without
        # that the mixture collapses onto zero and every weight is snapped to 0.  The mixture's
        # learning rates come from the preset (raised here); the network's from TrainingArguments.
        cb = SoftWeightSharingCallback("tutorial", out=args.out, tau=args.tau, init="range", init_sigma=0.02,
                                       zero_beta=0.2, beta=0.01, lr_means=1e-3, lr_log_precisions=1e-2)
        trainer = SoftWeightSharingTrainer(model=model, args=arguments(folder, args.epochs, 1e-3),
                                           train_dataset=train, eval_dataset=val, compute_metrics=accuracy, sws=cb)
        out_sws = trainer.train()
        acc_q = trainer.evaluate()["eval_accuracy"]
    logs = [r for r in trainer.state.log_history if "sws/complexity" in r]
    print(f"complexity term: {logs[0]['sws/complexity']:.4g} -> {logs[-1]['sws/complexity']:.4g}, "
          f"zero component sd {logs[0]['sws/sd0']:.3g} -> {logs[-1]['sws/sd0']:.3g}")
    print(f"validation accuracy: fine-tuned {acc_pre:.4f}, quantised {acc_q:.4f}")
    r = cb.result
    if r["sws/status"] == "over":           # the guard kept the file out: the trained weights are back
        print(r["sws/message"])
        return 1
    print(f"time in the prior (gradient and mixture step): {1000 * r['sws/prior_seconds'] / r['sws/steps']:.1f} ms "
          f"per step, {100 * r['sws/prior_seconds'] / out_sws.metrics['train_runtime']:.1f}% of the Trainer's "
          f"{out_sws.metrics['train_runtime']:.0f} s (fine-tuning without it: {out_pre.metrics['train_runtime']:.0f} s "
          f"for {out_pre.global_step} steps)")
    print(f"non-zero weights {100 * r['sws/nonzero_share']:.2f}%, {r['sws/distinct_values']} distinct values; "
          f"{args.out}: {r['sws/file_bytes']} bytes, CR {r['sws/cr_file']:.1f} from the file's bytes "
          f"({time.perf_counter() - t0:.0f} s)")

    net = sws.load(args.out, model=transformers.BertForSequenceClassification(config()))
    batch = torch.utils.data.default_collate([val[i] for i in range(64)])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        same = torch.equal(net(**batch).logits, model(**batch).logits)
    print(f"sws.load(..., model=BertForSequenceClassification(config)): same outputs as the trained model: {same}")
    if args.onnx:
        info = sws.export_onnx(args.out, args.onnx, model=transformers.BertForSequenceClassification(config()),
                               example_input=batch, gather=True)
        with tempfile.TemporaryDirectory() as folder:
            dense = sws.export_onnx(args.out, f"{folder}/dense.onnx", example_input=batch,
                                    model=transformers.BertForSequenceClassification(config()))["bytes"]
        print(f"{args.onnx}: {info['bytes']} bytes (gather graph, {info['gather']['tensors']} tensors as "
              f"{info['gather']['index_bits']}-bit indices; the dense graph: {dense} bytes), "
              f"inputs {', '.join(info['input_names'])}")
        try:
            import onnxruntime
        except ImportError:
            return
        session = onnxruntime.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {k: v.numpy() for k, v in batch.items()})[0]
        with torch.no_grad():
            diff = (torch.from_numpy(got) - model(**batch).logits).abs().max().item()
        print(f"ONNX Runtime: max abs difference from PyTorch {diff:.2g}")


if __name__ == "__main__":
    raise SystemExit(main())

"""ONNX export: a .sws file as a graph that ONNX Runtime runs with the PyTorch network's outputs
(max abs difference <= 1e-4), dense or with each quantised tensor gathered from codebook indices."""

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import sws  # noqa: E402
from sws.cli import main  # noqa: E402
from sws.errors import ConfigError  # noqa: E402


def quantize(model, k=16, sparsity=0.8, seed=0):
    """Snap every parameter to a k-entry codebook and zero the smallest ones, as retraining would."""
    torch.manual_seed(seed)
    levels = torch.linspace(-0.25, 0.25, k - 1 + (k % 2 == 0))
    levels = levels[levels != 0][:k - 1]
    codebook = torch.cat([torch.zeros(1), levels])
    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            q = codebook[(p.reshape(-1, 1) - codebook).abs().argmin(1)].reshape(p.shape)
            q[p.abs() < p.abs().flatten().quantile(sparsity)] = 0.0
            p.copy_(q)
            names.append(name)
    return codebook, names


def reference_file(tmp_path, name, k=16):
    net = sws.build_model(name)
    codebook, names = quantize(net, k)
    path = tmp_path / f"{name}.sws"
    sws.save(path, net, codebook=codebook, quantized=names, name=name, input_norm="none")
    return path


def run_onnx(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {k: v.numpy() for k, v in feeds.items()})[0]


def max_diff(a, b):
    return float((torch.as_tensor(a) - b).abs().max())


@pytest.mark.parametrize("name", ["lenet-300-100", "tutorial-conv"])
def test_reference_net_dense_and_gather_match_pytorch(tmp_path, name):
    path = reference_file(tmp_path, name)
    net = sws.load(path)
    x = torch.rand(5, 1, 28, 28)            # batch 5: the batch dimension is dynamic
    with torch.no_grad():
        want = net(x)
    dense = sws.export_onnx(path, tmp_path / "dense.onnx")
    gather = sws.export_onnx(path, tmp_path / "gather.onnx", gather=True)
    for info in (dense, gather):
        got = run_onnx(info["path"], {"input": x})
        assert max_diff(got, want) <= 1e-4
    # the gather graph: every weight and bias as 4-bit indices, one codebook, ~8x smaller
    assert gather["opset"] == 21 and gather["gather"]["index_bits"] == 4
    n_weights = sum(p.numel() for p in net.parameters() if p.numel() >= 16)
    assert gather["gather"]["elements"] == n_weights
    assert gather["bytes"] < dense["bytes"] / 6
    g = onnx.load(gather["path"])
    types = {i.data_type for i in g.graph.initializer if i.name.endswith(".sws_index")}
    assert types == {onnx.TensorProto.UINT4}
    assert [n.op_type for n in g.graph.node[:2]] == ["Cast", "Gather"]


def test_more_than_16_values_take_8_bit_indices(tmp_path):
    path = reference_file(tmp_path, "lenet-300-100", k=40)
    info = sws.export_onnx(path, tmp_path / "g.onnx", gather=True)
    assert info["opset"] == 17 and info["gather"]["index_bits"] == 8
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert max_diff(run_onnx(info["path"], {"input": x}), sws.load(path)(x)) <= 1e-4


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        return self.body(x)


def test_user_model_needs_an_instance_and_an_example_input(tmp_path):
    model = SmallCNN()
    model.body[1].running_mean.uniform_(-0.1, 0.1)
    codebook, names = quantize(model, 16)
    path = tmp_path / "cnn.sws"
    sws.save(path, model, codebook=codebook, quantized=[n for n in names if not n.startswith("body.1.")])
    with pytest.raises(ConfigError, match="user-defined model"):
        sws.export_onnx(path, tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="example_input"):
        sws.export_onnx(path, tmp_path / "x.onnx", model=SmallCNN())
    x = torch.rand(4, 3, 12, 12)
    info = sws.export_onnx(path, tmp_path / "cnn.onnx", model=SmallCNN(), example_input=x[:1], gather=True)
    net = sws.load(path, model=SmallCNN())
    with torch.no_grad():
        assert max_diff(run_onnx(info["path"], {"input": x}), net(x)) <= 1e-4
    # both kernels, the second convolution's bias (16 values) and the linear layer's weights: the
    # batch-norm is not folded into the first convolution, whose kernel keeps its codebook values
    assert info["gather"]["tensors"] == 4
    types = [n.op_type for n in onnx.load(info["path"]).graph.node]
    assert "BatchNormalization" in types


def test_hugging_face_bert_with_named_inputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg).eval()
    covered = sws.select_parameters(model)
    codebook, _ = quantize(nn.ModuleDict({"m": model}), 16)   # snaps everything, layer norms too
    path = tmp_path / "bert.sws"
    sws.save(path, model, codebook=codebook, quantized=list(covered))
    ids = torch.randint(0, 40, (2, 16))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    info = sws.export_onnx(path, tmp_path / "bert.onnx", model=transformers.BertForSequenceClassification(cfg),
                           example_input=feeds, gather=True)
    assert info["input_names"] == ["input_ids", "attention_mask"]
    net = sws.load(path, model=transformers.BertForSequenceClassification(cfg))
    with torch.no_grad():
        want = net(**feeds).logits
    assert max_diff(run_onnx(info["path"], feeds), want) <= 1e-4


def test_cli_export(tmp_path, capsys):
    path = reference_file(tmp_path, "lenet-300-100")
    for flag in ("--dense", "--gather"):
        out = tmp_path / f"m{flag}.onnx"
        with pytest.raises(SystemExit) as e:
            main(["export", str(path), "--onnx", str(out), flag])
        text = capsys.readouterr().out
        assert e.value.code == 0 and text.startswith(f"wrote {out}: ") and out.is_file()
    assert "4-bit codebook indices" in text
    # a file of a user-defined module: one line, exit code 2
    model = SmallCNN()
    user = tmp_path / "user.sws"
    sws.save(user, model, codebook=quantize(model)[0])
    with pytest.raises(SystemExit) as e:
        main(["export", str(user), "--onnx", str(tmp_path / "u.onnx")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "model=" in err

"""A ``.sws`` file as an ONNX graph, for ONNX Runtime and the other ONNX back-ends (issue 17).

``export_onnx(path, out)`` decodes the file (``sws.load``), traces the network with
torch's TorchScript-based exporter (``dynamo=False``: it needs nothing beyond torch and
``onnx``; the torch.export-based one needs ``onnxscript``) and writes the graph, the batch
dimension dynamic.  Two layouts:

- dense (default): every tensor as float32, as any exporter writes it.
- gather (``gather=True``, ``sws export --gather``): each quantised tensor is stored as
  codebook indices, 4 bits each for a codebook of at most 16 values (8 or 16 bits for
  larger ones), and a ``Cast`` + ``Gather`` at the start of the graph rebuilds the float
  tensor from one shared codebook when the runtime loads it.  The file shrinks about 8x
  (4-bit) before any zip; the runtime's arithmetic and outputs are the dense graph's.
  4-bit indices need opset 21 (ONNX Runtime >= 1.17); the default opset is then 21,
  otherwise 17.

A quantised tensor is recognised by value: every element an entry of the file's codebook
(the exporter may fold, transpose or rename initialisers, so names are not trusted).
``pip install sws[onnx]`` installs ``onnx`` and ``onnxruntime``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from sws.errors import ConfigError

__all__ = ["export_onnx", "gather_codebook", "DEFAULT_INPUT"]

DEFAULT_INPUT = (1, 1, 28, 28)   # the reference nets take MNIST images in [0, 1]
MIN_GATHER = 16                  # smaller tensors stay dense: a Cast and a Gather cost more


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'sws[onnx]'") from None
    return onnx


class _Outputs(torch.nn.Module):
    """The network with positional tensor inputs and its class scores as the one output."""

    def __init__(self, net, keys):
        super().__init__()
        self.net, self.keys = net, keys

    def forward(self, *xs):
        from sws.method.batches import logits_of
        out = self.net(**dict(zip(self.keys, xs))) if self.keys else self.net(*xs)
        return logits_of(out)


def _inputs(example_input):
    """(keys or None, tuple of tensors, input names) of an example input."""
    if torch.is_tensor(example_input):
        return None, (example_input,), ["input"]
    if isinstance(example_input, dict) or (hasattr(example_input, "keys") and hasattr(example_input, "items")):
        items = [(k, v) for k, v in example_input.items() if torch.is_tensor(v)]
        if not items:
            raise ConfigError("example_input: a mapping needs at least one tensor")
        return [k for k, _ in items], tuple(v for _, v in items), [k for k, _ in items]
    if isinstance(example_input, (tuple, list)) and all(torch.is_tensor(t) for t in example_input):
        return None, tuple(example_input), [f"input{i}" for i in range(len(example_input))]
    raise ConfigError(f"example_input must be a tensor, a tuple of tensors or a mapping of names to "
                      f"tensors, got {type(example_input).__name__}")


def _index_type(k: int, opset: int):
    from onnx import TensorProto
    if k <= 16 and opset >= 21:
        return TensorProto.UINT4, 4
    if k <= 256:
        return TensorProto.UINT8, 8
    return TensorProto.UINT16, 16


def gather_codebook(model, codebook, min_size: int = MIN_GATHER) -> dict:
    """Rewrite an ONNX model in place: every float initializer of at least ``min_size``
    elements whose values all lie in ``codebook`` becomes an index initializer, a ``Cast``
    to int32 and a ``Gather`` from the shared codebook under the initializer's name.

    Returns:
      {"tensors": how many were rewritten, "elements": their size, "index_bits": 4, 8 or 16}.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    cb = np.asarray(codebook, dtype=np.float32).reshape(-1)
    order = np.argsort(cb, kind="stable")
    sorted_cb = cb[order]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    dtype, bits = _index_type(cb.size, opset)
    graph = model.graph
    names = {n for node in graph.node for n in node.output} | {i.name for i in graph.initializer}
    cb_name = "sws.codebook"
    while cb_name in names:
        cb_name += "_"
    keep, nodes, count, elements = [], [], 0, 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_size:
            keep.append(init)
            continue
        w = numpy_helper.to_array(init).astype(np.float32, copy=False)
        pos = np.clip(np.searchsorted(sorted_cb, w), 0, cb.size - 1)
        if not np.array_equal(sorted_cb[pos], w):   # not a quantised tensor
            keep.append(init)
            continue
        idx = order[pos].reshape(-1).astype(np.uint32)
        if bits == 4:
            if idx.size % 2:
                idx = np.append(idx, 0)
            raw = (idx[0::2] | (idx[1::2] << 4)).astype(np.uint8).tobytes()
        else:
            raw = idx.astype("<u1" if bits == 8 else "<u2").tobytes()
        iname = f"{init.name}.sws_index"
        keep.append(helper.make_tensor(iname, dtype, list(init.dims), raw, raw=True))
        nodes += [helper.make_node("Cast", [iname], [f"{iname}.int32"], to=TensorProto.INT32,
                                   name=f"{init.name}.sws_cast"),
                  helper.make_node("Gather", [cb_name, f"{iname}.int32"], [init.name], axis=0,
                                   name=f"{init.name}.sws_gather")]
        count += 1
        elements += w.size
    if not count:
        return {"tensors": 0, "elements": 0, "index_bits": bits}
    keep.append(numpy_helper.from_array(cb, cb_name))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    gathered = {n.output[0] for n in nodes[1::2]}
    inputs = [i for i in graph.input if i.name not in gathered]   # old IR: initializers listed as inputs
    del graph.input[:]
    graph.input.extend(inputs)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    if bits == 4 and model.ir_version < 10:
        model.ir_version = 10
    onnx.checker.check_model(model)
    return {"tensors": count, "elements": int(elements), "index_bits": bits}


def export_onnx(path, out, model: torch.nn.Module | None = None, example_input=None, *, gather: bool = False,
                opset: int | None = None, dynamic_batch: bool = True) -> dict:
    """Write the network of the ``.sws`` file at ``path`` as an ONNX graph at ``out``.

    Args:
      path: a ``.sws`` file.
      out: the ``.onnx`` file to write (atomically).
      model: for a file of a user-defined module, an instance of its architecture
        (``sws.load(path, model=model)``); a reference net is rebuilt from the file.
      example_input: what the network is traced with: a tensor, a tuple of tensors, or a
        mapping of keyword names to tensors (``{"input_ids": ..., "attention_mask": ...}``
        for a Hugging Face model); default for a reference net: zeros of shape (1, 1, 28, 28).
        The graph's inputs are named "input" (a tensor) or after the mapping's keys; its output
        "logits" (the class scores: a ``.logits`` attribute or the first item is taken).
      gather: store each quantised tensor as codebook indices gathered at load time.
      opset: the ONNX opset [21 with gather and a codebook of at most 16 values, else 17].
      dynamic_batch: the first dimension of every input and of the output is dynamic.
    Returns:
      {"path", "bytes", "opset", "gather": {...} or None, "input_names"}.
    """
    from sws.format.container import read
    from sws.method.files import USER_PREFIX, load
    from sws.storage import atomic_write
    onnx = _onnx()
    decoded = read(path)
    name = decoded.header["model"]["name"]
    if model is None and name.startswith(USER_PREFIX):
        raise ConfigError(f"{path}: holds a user-defined model ({name[len(USER_PREFIX):]}); export it from "
                          "Python with sws.export_onnx(path, out, model=INSTANCE, example_input=INPUT)")
    if model is not None and example_input is None:
        raise ConfigError("a user-defined model needs example_input= (a batch it can be called with)")
    net = load(path, model=model)
    if example_input is None:
        example_input = torch.zeros(DEFAULT_INPUT)
    keys, args, input_names = _inputs(example_input)
    if opset is None:
        opset = 21 if gather and decoded.codebook.size <= 16 else 17
    axes = {n: {0: "batch"} for n in input_names + ["logits"]} if dynamic_batch else None
    buf = io.BytesIO()
    wrapped = _Outputs(net, keys).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")        # the TorchScript exporter's deprecation notices
        # with gather, batch-norm stays a node of its own (the network is in eval mode, so it
        # computes the same): folded into the convolution before it, that kernel would no longer
        # hold codebook values.  ONNX Runtime folds it again when it loads the graph.
        mode = torch.onnx.TrainingMode.PRESERVE if gather else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(wrapped, args, buf, dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=["logits"], dynamic_axes=axes, do_constant_folding=True, training=mode)
    graph = onnx.load_from_string(buf.getvalue())
    info = gather_codebook(graph, decoded.codebook) if gather else None
    data = graph.SerializeToString()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), data)
    return {"path": str(out), "bytes": len(data), "opset": opset, "gather": info, "input_names": input_names}

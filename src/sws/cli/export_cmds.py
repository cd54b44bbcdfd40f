"""Export: ``sws export FILE.sws --onnx OUT.onnx`` (the decoded network, for ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import click

from sws.cli import cli


@cli.command("export")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_out", type=click.Path(path_type=Path), required=True, metavar="OUT.onnx",
              help="ONNX file to write.")
@click.option("--gather/--dense", default=False, show_default=True,
              help="Store each quantised tensor as codebook indices (4 bits for up to 16 values) that a "
                   "Gather turns back into floats when the runtime loads the graph: about 8x smaller.")
@click.option("--opset", type=int, default=None,
              help="ONNX opset [21 with --gather and at most 16 codebook values (4-bit indices), else 17].")
def export_cmd(path, onnx_out, gather, opset):
    """Write the network of a .sws file of a reference net as an ONNX graph (batch size dynamic,
    input "input" of shape (N, 1, 28, 28) in [0, 1], output "logits").

    A file of your own module: sws.export_onnx(path, out, model=INSTANCE, example_input=BATCH).
    """
    from sws.export.onnx import export_onnx
    info = export_onnx(path, onnx_out, gather=gather, opset=opset)
    g = info["gather"]
    how = (f"{g['tensors']} tensors as {g['index_bits']}-bit codebook indices" if g and g["tensors"]
           else "dense float32 tensors")
    click.echo(f"wrote {onnx_out}: {info['bytes']} bytes, opset {info['opset']}, {how}")

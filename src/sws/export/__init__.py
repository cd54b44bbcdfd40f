"""Exports of a ``.sws`` file to other formats: ONNX (``sws.export_onnx``, ``sws export --onnx``)."""

from sws.export.onnx import export_onnx

__all__ = ["export_onnx"]

"""Reference networks by name (SPEC section 6).

Every model takes images as float tensors in [0, 1], shape (n, 1, 28, 28).  An
input normalisation the net was trained with lives inside the model as fixed
buffers (``InputNorm``), so a saved model needs nothing but its file.
"""

from __future__ import annotations

import torch
from torch import nn

from sws.errors import ConfigError

__all__ = ["InputNorm", "build_model", "MODELS"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class InputNorm(nn.Module):
    """(x - mean) / std with fixed, non-trainable mean and std."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x):
        return (x - self.mean) / self.std


def _tutorial_conv():
    # Keras tutorial: Conv 25@5x5 s2 + ReLU, Conv 50@3x3 s2 + ReLU, FC 500 + ReLU, FC 10
    return [nn.Conv2d(1, 25, 5, stride=2), nn.ReLU(), nn.Conv2d(25, 50, 3, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(1250, 500), nn.ReLU(), nn.Linear(500, 10)]


def _lenet_300_100():
    return [nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
            nn.Linear(100, 10)]


def _lenet5_caffe():
    # Caffe's LeNet-5: no non-linearity after the convolutions
    return [nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10)]


MODELS = {
    "tutorial-conv": _tutorial_conv,
    "lenet-300-100": _lenet_300_100,
    "lenet-5-caffe": _lenet5_caffe,
}


def keras_init_(model: nn.Module) -> nn.Module:
    """Keras' default initialisation, which the tutorial's nets were trained from:
    Glorot-uniform weights, zero biases (PyTorch's default draws weights about
    half as large for these layers)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def build_model(name: str, input_norm: str = "none", seed: int | None = None,
                init: str = "torch") -> nn.Sequential:
    """Build a reference net.

    Args:
      name: one of ``MODELS``.
      input_norm: "none" (the tutorial: pixels / 255 go in as they are) or
        "standardize" ((x - 0.1307) / 0.3081 applied inside the model).
      seed: seeds the weight initialisation when given.
      init: "torch" (PyTorch's layer defaults) or "keras" (Glorot-uniform
        weights, zero biases: what the tutorial's Keras nets started from).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if input_norm not in ("none", "standardize"):
        raise ConfigError(f"unknown input_norm {input_norm!r}; choose 'none' or 'standardize'")
    if seed is not None:
        torch.manual_seed(seed)
    if init not in ("keras", "torch"):
        raise ConfigError(f"unknown init {init!r}; choose 'keras' or 'torch'")
    norm = InputNorm(MNIST_MEAN, MNIST_STD) if input_norm == "standardize" else InputNorm()
    model = nn.Sequential(norm, *MODELS[name]())
    return keras_init_(model) if init == "keras" else model


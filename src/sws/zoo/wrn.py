"""Wide residual networks for CIFAR (Zagoruyko & Komodakis 2016): the paper's "ResNet (light)".

WRN-d-k: a 3x3 convolution to 16 channels, three groups of (d - 4) / 6
pre-activation basic blocks with 16k, 32k and 64k channels (the last two
halving the resolution), batch-norm, ReLU, global average pooling and a
linear classifier.  WRN-16-4 (SPEC section 6) has 2,748,890 parameters.
Like the MNIST nets, the model takes images as float tensors in [0, 1], shape
(n, 3, 32, 32), and normalises them inside (fixed per-channel buffers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "ChannelNorm", "BasicBlock", "WideResNet", "build_wrn"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class ChannelNorm(nn.Module):
    """(x - mean) / std per channel, with fixed, non-trainable mean and std."""

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the input (a 1x1 conv when shapes change)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
                         if c_in != c_out or stride != 1 else None)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        # the projection shortcut takes the pre-activated input, as in the authors' code
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        if self.dropout:
            o = F.dropout(o, self.dropout, self.training)
        return skip + self.conv2(o)


class WideResNet(nn.Module):
    """WRN-depth-widen for 32x32 images."""

    def __init__(self, depth: int = 16, widen: int = 4, num_classes: int = 10,
                 dropout: float = 0.0, normalize: bool = True):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        if widen < 1:
            raise ValueError(f"widen must be >= 1, got {widen}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.norm = ChannelNorm() if normalize else nn.Identity()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        groups = []
        for g in range(3):
            blocks = [BasicBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                 (1 if g == 0 else 2) if i == 0 else 1, dropout) for i in range(n)]
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        o = self.conv1(self.norm(x))
        o = self.block3(self.block2(self.block1(o)))
        o = F.relu(self.bn(o))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(o, 1), 1))


def build_wrn(depth: int = 16, widen: int = 4, num_classes: int = 10, dropout: float = 0.0,
              seed: int | None = None) -> WideResNet:
    """WRN-depth-widen (default WRN-16-4, the paper's ResNet); ``seed`` seeds the initialisation."""
    if seed is not None:
        torch.manual_seed(seed)
    return WideResNet(depth, widen, num_classes, dropout)

"""Random augmentation of training batches: shifted and mirrored images (beyond the paper).

A spec names the transforms, joined by ``+``: ``shift:K`` moves each image by up to K pixels
in each direction (a uniform integer offset per image and axis; the uncovered border is 0),
``flip`` mirrors each image left-right with probability 1/2.  ``""`` is off.  Only training
batches are augmented; validation, test, the budget's watches and the codebook's fine-tuning
see the data as it is.

Each batch's draws come from a generator seeded by (seed, epoch, step, process), so a resumed
run augments its batches exactly as one that never stopped, and no state is saved for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sws.errors import ConfigError, DataError

__all__ = ["Augment", "parse", "batch_generator"]

_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class Augment:
    """Parsed ``augment`` spec: the largest shift in pixels (0: none) and whether to flip."""

    shift: int = 0
    flip: bool = False
    spec: str = ""

    def check(self, x) -> None:
        """DataError unless ``x`` is a batch of images: a floating tensor (N, H, W) or (N, C, H, W)."""
        if not torch.is_tensor(x) or x.dim() not in (3, 4) or not x.is_floating_point():
            what = (f"a {x.dtype} tensor of shape {tuple(x.shape)}" if torch.is_tensor(x)
                    else f"a {type(x).__name__}")
            raise DataError(f"augment {self.spec!r} shifts and flips images, a floating tensor of shape "
                            f"(N, H, W) or (N, C, H, W), but the training inputs are {what}; "
                            "leave augment empty for this data")
        if 2 * self.shift >= min(x.shape[-2:]):
            raise DataError(f"augment {self.spec!r}: a shift of {self.shift} pixels is half or more of the "
                            f"images' {x.shape[-2]}x{x.shape[-1]}; use a smaller shift")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The batch ``x`` augmented with draws from ``generator`` (on the CPU)."""
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        if self.shift:
            k = self.shift
            dy = torch.randint(0, 2 * k + 1, (n,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * k + 1, (n,), generator=generator).to(x.device)
            padded = F.pad(x, (k, k, k, k))
            rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, :, None]   # (n, h, 1)
            cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, :]   # (n, 1, w)
            items = torch.arange(n, device=x.device)[:, None, None]
            if x.dim() == 3:
                x = padded[items, rows, cols]
            else:                                    # advanced indexing puts the channels last
                x = padded.permute(0, 2, 3, 1)[items, rows, cols].permute(0, 3, 1, 2).contiguous()
        if self.flip:
            mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            x = torch.where(mirror.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
        return x


def parse(spec: str) -> Augment | None:
    """The ``Augment`` of a spec (None for ""); ConfigError naming the bad part."""
    if not isinstance(spec, str):
        raise ConfigError(f"augment must be a string such as 'shift:2' or 'shift:2+flip', got {spec!r}")
    if not spec.strip():
        return None
    shift, flip = 0, False
    for part in spec.split("+"):
        name, _, arg = part.strip().partition(":")
        if name == "shift":
            if not arg.isdigit() or int(arg) < 1:
                raise ConfigError(f"augment {spec!r}: 'shift' needs a whole number of pixels >= 1, "
                                  "as in 'shift:2'")
            shift = int(arg)
        elif name == "flip" and not arg:
            flip = True
        else:
            raise ConfigError(f"augment {spec!r}: unknown transform {part.strip()!r}; "
                              "known: 'shift:K' (pixels), 'flip', joined by '+'")
    return Augment(shift, flip, spec)


def batch_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of one batch's augmentation: a function of where the batch is."""
    key = seed & _MASK
    for part in (epoch, step, rank):
        key = (key * 1_000_003 + part + 1) & _MASK
    return torch.Generator().manual_seed(key)

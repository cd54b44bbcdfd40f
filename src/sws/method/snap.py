"""Training through the snap (beyond the paper): the network as post-processing will leave it,
in the forward pass of the last epochs of retraining.

Snapping every weight to its component's mean costs accuracy that retraining never sees
(measured on LeNet-300-100 with the default settings: 0.4-0.5 points of validation error).
In the snap phase (``RetrainConfig.snap_epochs``) each step runs the forward and backward
passes with every covered weight replaced by the value post-processing would give it under the
current prior (merge, the mean nearest 0 snapped to 0, the MAP assignment: ``quantize_``'s
steps), and applies the data term's gradient to the continuous weights, as if the snap were the
identity (the straight-through estimator; Bengio, Leonard & Courville 2013).  The prior's
gradient is taken at the continuous weights as before, so weights still move between
components and onto zero, and the mixture keeps learning.  The network that is trained is the
one the user keeps.

``assign``'s answer is tabulated once per step over the real line (``sws.prior.merge.intervals``),
so a step costs one pass over the weights (in C, ``sws.prior.kernel.snap_swap_``; else
``bucketize``) and one copy back.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from sws.method.postprocess import codebook_of
from sws.prior.kernel import snap_swap_
from sws.prior.merge import Mixture, intervals

__all__ = ["Snap"]


class Snap:
    """The snap of the covered tensors under ``prior``'s current mixture (merge ``threshold``)."""

    def __init__(self, prior, covered: list[torch.Tensor], threshold: float):
        self.prior, self.covered, self.threshold = prior, list(covered), threshold
        self._saved, self._active = None, False   # the continuous values' buffers, reused per block

    @torch.no_grad()
    def table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(edges, values): weights between ``edges[i-1]`` and ``edges[i]`` snap to ``values[i]``."""
        codebook, merged, remap = codebook_of(Mixture.from_prior(self.prior), self.threshold)
        edges, winners = intervals(merged)
        return edges, codebook[remap[winners]]

    @torch.no_grad()
    def snapped(self, w: torch.Tensor, table=None) -> torch.Tensor:
        """A snapped copy of ``w``."""
        edges, values = table if table is not None else self.table()
        idx = torch.bucketize(w, edges.to(device=w.device, dtype=w.dtype))
        return values.to(device=w.device, dtype=w.dtype)[idx]

    @contextmanager
    def applied(self):
        """Within the block the covered tensors hold their snapped values; their gradients stay,
        their continuous values come back after it (also on an exception)."""
        table = self.table()
        saved = self._buffers()
        with torch.no_grad():
            for p, s in zip(self.covered, saved):
                if not snap_swap_(p.detach(), s, *table):      # the C pass, else PyTorch
                    s.copy_(p)
                    p.copy_(self.snapped(p.detach(), table))
        nested, self._active = self._active, True
        try:
            yield
        finally:
            self._active = nested
            with torch.no_grad():
                for p, s in zip(self.covered, saved):
                    p.copy_(s)

    def _buffers(self) -> list[torch.Tensor]:
        """Where a block keeps the continuous values: the same tensors from block to block (a
        fresh one per step and tensor costs the allocation and its first touch, 0.2-0.8 ms a step
        for LeNet-300-100), fresh ones inside another block or for tensors that changed."""
        if self._active:
            return [torch.empty_like(p) for p in self.covered]
        if self._saved is None or any(s.shape != p.shape or s.dtype != p.dtype or s.device != p.device
                                      for s, p in zip(self._saved, self.covered)):
            self._saved = [torch.empty_like(p) for p in self.covered]
        return self._saved

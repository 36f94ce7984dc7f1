"""Dropout whose masks are cheap on a CPU.

torch draws nn.Dropout's masks on a CPU with `bernoulli_`, ~3x slower there than comparing
`torch.rand` with p: at experiment=multi30k_converged's shape (bf16) `bernoulli_` was 22% of a
plain training step's time. The masks have the same distribution, and K passes draw K of them
as before (intra-distillation needs them to differ). On other devices torch's own (fused)
dropout runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Dropout(nn.Dropout):
    """nn.Dropout: zeroes each element with probability p in training and scales the rest by
    1 / (1 - p); the identity in eval mode."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p == 1.0 or self.inplace:
            return F.dropout(x, self.p, True, self.inplace)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # True with probability 1 - p
        # the scale after the mask, not in it: 1 / (1 - p) is inexact in bf16 (1/0.7 would
        # be 1.4297, a bias of +0.08%), while a product is rounded once, as torch's dropout's
        return x.mul(keep.to(x.dtype)).mul_(1.0 / (1.0 - self.p))

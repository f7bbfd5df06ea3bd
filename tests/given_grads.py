"""A module whose parameters' gradients are exactly what a test passes in (for compressor tests)."""

from __future__ import annotations

import torch
from torch import nn


class Given(nn.Module):
    """Parameters whose gradient is whatever the step passes in: loss = sum_i <p_i, g_i>."""

    def __init__(self, *shapes):
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in shapes])

    def forward(self, grads):
        return sum((p * g).sum() for p, g in zip(self.ps, grads))

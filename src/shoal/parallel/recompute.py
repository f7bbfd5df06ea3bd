"""Activation checkpointing: keep only each block's input and recompute its insides in backward.

The block's forward is wrapped in place (no wrapper module), so parameter names and
state_dict keys stay those of the user's model.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

from shoal.parallel.layers import blocks


def apply(model: nn.Module) -> list[str]:
    wrapped = []
    for name in blocks(model):
        module = model.get_submodule(name)
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)
        wrapped.append(name)
    return wrapped

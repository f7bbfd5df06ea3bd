"""A plain multi-layer perceptron: the smallest model that still shows every strategy."""

from __future__ import annotations

import math

from torch import nn


def build_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = (128,), dropout: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)

"""Balanced pipeline split: contiguous layer ranges whose stage times are as even as possible.

The time of a stage is the cost of its layers divided by the speed of the rank that owns it,
and a pipeline runs at the pace of its slowest stage, so the split minimises the largest stage
time (an exact dynamic programme over cut positions: layers and stages are few). Costs come
from FLOPs counted on one micro-batch plus a small per-parameter term, or from measured time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Split:
    stages: list[list[str]]          # layer names of each stage, in order
    predicted_s: list[float]         # predicted time of each stage (cost / owner speed)

    @property
    def imbalance(self) -> float:
        """Slowest stage over the mean stage: 1.0 is perfect."""
        return max(self.predicted_s) / (sum(self.predicted_s) / len(self.predicted_s))


def partition(costs: list[float], speeds: list[float]) -> list[int]:
    """Cut positions (len(speeds) - 1 of them) minimising max(stage cost / stage speed)."""
    n, s = len(costs), len(speeds)
    if s > n:
        raise ValueError(f"{s} stages need at least {s} layers, the model has {n}")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(s + 1)]  # best[k][i]: first i layers in k stages
    cut = [[0] * (n + 1) for _ in range(s + 1)]
    best[0][0] = 0.0
    for k in range(1, s + 1):
        for i in range(k, n - (s - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], (prefix[i] - prefix[j]) / speeds[k - 1])
                if value < best[k][i] - 1e-12:
                    best[k][i], cut[k][i] = value, j
    cuts, i = [], n
    for k in range(s, 0, -1):
        i = cut[k][i]
        cuts.append(i)
    return sorted(cuts)[1:]


def equal_counts(n_layers: int, n_stages: int) -> list[int]:
    """The naive split: the same number of layers per stage (the first stages take the remainder)."""
    base, extra = divmod(n_layers, n_stages)
    cuts, at = [], 0
    for k in range(n_stages - 1):
        at += base + (k < extra)
        cuts.append(at)
    return cuts


def make_split(names: list[str], costs: list[float], speeds: list[float], cuts: list[int]) -> Split:
    bounds = [0, *cuts, len(names)]
    stages = [names[a:b] for a, b in zip(bounds, bounds[1:])]
    predicted = [sum(costs[a:b]) / v for a, b, v in zip(bounds, bounds[1:], speeds)]
    return Split(stages, predicted)


def _call(layer: nn.Module, x, step=None):
    return step(layer, x) if step is not None else layer(x)


def flop_costs(model: nn.Module, names: list[str], sample: torch.Tensor, steps: dict | None = None) -> list[float]:
    """Forward+backward FLOPs of each layer on `sample` (3x forward), plus 6 per parameter (optimizer, memory).
    `steps`: how a layer is called where not as layer(x) (transformers models: parallel/hf_pipeline.py)."""
    costs, x, steps = [], sample, steps or {}
    with torch.no_grad():
        for name in names:
            layer = model.get_submodule(name)
            with FlopCounterMode(display=False) as counter:
                x = _call(layer, x, steps.get(name))
            params = sum(p.numel() for p in layer.parameters())
            costs.append(3.0 * counter.get_total_flops() + 6.0 * params)
    return costs


def timed_costs(model: nn.Module, names: list[str], sample: torch.Tensor, steps: dict | None = None, repeats: int = 3) -> list[float]:
    """Measured forward+backward seconds of each layer on `sample` (median of `repeats`)."""
    costs, x, steps = [], sample, steps or {}
    for name in names:
        layer = model.get_submodule(name)
        runs = []
        for _ in range(repeats):
            inp = x.detach().requires_grad_(x.is_floating_point())
            t0 = time.perf_counter()
            out = _call(layer, inp, steps.get(name))
            if out.requires_grad:
                out.float().sum().backward()
            runs.append(time.perf_counter() - t0)
        layer.zero_grad(set_to_none=True)
        costs.append(sorted(runs)[len(runs) // 2])
        x = out.detach()
    return costs


def matmul_speed(seconds: float = 0.3, size: int = 256) -> float:
    """This process's fp32 matmul rate in GFLOP/s: the capability a stage owner brings."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        done += 1
    return 2 * size**3 * done / (time.perf_counter() - t0) / 1e9

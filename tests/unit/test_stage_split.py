"""The balanced pipeline split is optimal, follows owner speed, and beats equal layer counts."""

from __future__ import annotations

import itertools
import random

import torch
from torch import nn

from shoal.models.gpt import build_gpt
from shoal.parallel import pipeline, stage_split


def brute_force(costs, speeds):
    n, s = len(costs), len(speeds)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), s - 1):
        bounds = [0, *cuts, n]
        best = min(best, max(sum(costs[a:b]) / v for a, b, v in zip(bounds, bounds[1:], speeds)))
    return best


def stage_max(costs, speeds, cuts):
    return max(stage_split.make_split([str(i) for i in range(len(costs))], costs, speeds, cuts).predicted_s)


def test_partition_is_optimal():
    rng = random.Random(0)
    for _ in range(50):
        n, s = rng.randint(2, 9), rng.randint(1, 4)
        if s > n:
            continue
        costs = [rng.uniform(0.1, 10) for _ in range(n)]
        speeds = [rng.choice([0.5, 1.0, 2.0]) for _ in range(s)]
        assert abs(stage_max(costs, speeds, stage_split.partition(costs, speeds)) - brute_force(costs, speeds)) < 1e-9


def test_faster_owner_gets_more_layers():
    costs = [1.0] * 12
    assert stage_split.partition(costs, [1.0, 1.0]) == [6]
    assert stage_split.partition(costs, [2.0, 1.0]) == [8]  # twice as fast: twice the layers, equal stage time


def test_uneven_layers_beat_equal_counts():
    costs = [8, 1, 1, 1, 1, 1, 1, 8]
    naive = stage_max(costs, [1, 1, 1, 1], stage_split.equal_counts(8, 4))
    balanced = stage_max(costs, [1, 1, 1, 1], stage_split.partition(costs, [1, 1, 1, 1]))
    assert (naive, balanced) == (9, 8)
    assert stage_split.equal_counts(7, 3) == [3, 5]


def test_flop_costs_follow_layer_size():
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))
    costs = stage_split.flop_costs(model, ["0", "1", "2"], torch.randn(4, 64))
    assert costs[0] > 4 * costs[2] > 0 and costs[1] < costs[2]
    gpt = build_gpt(16, 60, dim=32, layers=2, heads=4)
    names = gpt.pipeline_layers()
    meta = stage_split.flop_costs(gpt.to("meta"), names, torch.zeros(2, 16, dtype=torch.long, device="meta"))
    assert meta[1] == meta[2] > meta[0]  # counted on the meta device: no memory needed


def test_units_glue_weightless_layers_to_the_next():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU())
    assert pipeline.weighted_units(model, ["0", "1", "2", "3", "4"]) == [[0, 1], [2, 3, 4]]

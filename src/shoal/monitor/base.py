"""Monitor: one signal in every training record. The trainer calls `after_step` every step and
`record()` at log steps (a collective on the training group when the monitor needs one: every
training rank calls it); the fields it returns go into metrics.jsonl.

A new monitor is one file with `@MONITORS.register("name")` on its class, named in `[log] monitors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from shoal.distributed.collectives import TrainingGroup
from shoal.registry import Registry


@dataclass(frozen=True)
class MonitorContext:
    layout: Any  # shoal.parallel.Layout: what the model is on this rank
    optimizer: torch.optim.Optimizer
    group: TrainingGroup


class Monitor:
    def __init__(self, ctx: MonitorContext):
        self.ctx = ctx

    def after_step(self, step: int) -> None:
        pass

    def record(self) -> dict[str, Any]:
        return {}


MONITORS: Registry[type[Monitor]] = Registry("monitor", "log.monitors")

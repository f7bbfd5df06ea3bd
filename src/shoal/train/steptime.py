"""Where a step's time goes: data wait, compute, exposed communication, update.

- data wait: waiting for this step's micro-batches (near zero when the prefetcher had them ready);
- exposed communication: what backward spends after the last gradient was computed, waiting for
  the all-reduce of the last buckets (DDP overlaps the rest with backward). Measured with
  post-accumulate-grad hooks on the parameters; where none fire (FSDP2 assigns sharded gradients
  itself), its collectives stay inside compute and the field is left out of the record;
- compute: forward and backward of every micro-batch, less the exposed communication;
- update: clipping (with its norm all-reduce), the sync strategy's hooks and the optimizer step.
Every training record carries the mean per step of each, and `step_s`; they add up to it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch


class GradClock:
    """The time the latest gradient was accumulated into a parameter in the current backward pass."""

    def __init__(self, params: Iterable[torch.nn.Parameter]):
        self.last: float | None = None
        self.handles = [p.register_post_accumulate_grad_hook(self._tick) for p in params if p.requires_grad]

    def _tick(self, _param: torch.Tensor) -> None:
        self.last = time.perf_counter()

    def reset(self) -> None:
        self.last = None


class StepPhases:
    """The phases of one step, timed by the trainer as it goes: `mark(name)` ends a phase."""

    def __init__(self, clock: GradClock):
        self.clock, self.times, self.start = clock, {}, time.perf_counter()
        self.exposed: float | None = None

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = now - self.start
        self.start = now

    def last_microbatch(self) -> None:
        """Before the micro-batch whose backward synchronises: only its gradients' times count."""
        self.clock.reset()

    def end_backward(self) -> None:
        """After the last micro-batch's backward: split off what it spent waiting for communication."""
        now = time.perf_counter()
        compute = now - self.start
        if self.clock.last is not None:
            self.exposed = min(max(now - self.clock.last, 0.0), compute)
            compute -= self.exposed
        self.times["compute_s"] = compute
        if self.exposed is not None:
            self.times["comm_exposed_s"] = self.exposed
        self.start = now
        self.clock.reset()


class PhaseTotals:
    """Sums over a log window; `means(steps)` gives the per-step figures of the training record."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, phases: dict[str, float]) -> None:
        for name, seconds in phases.items():
            self.sums[name] = self.sums.get(name, 0.0) + seconds
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self, steps: int) -> dict[str, float]:
        out = {name: total / max(self.counts[name], 1) for name, total in self.sums.items() if self.counts[name] == steps}
        out["step_s"] = sum(self.sums.values()) / max(steps, 1) if steps else 0.0
        return out

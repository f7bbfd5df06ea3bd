"""Batch shares of the data-parallel ranks, for machines of mixed speed.

Shares are sample counts of one full global batch, one per data-parallel rank (dp x fsdp; the
tensor-parallel peers of a replica move as one), summing to the batch. `BatchPlan.step` splits
every batch in proportion (largest remainder), a short last batch alike. Which samples make a
batch never changes, only who computes them, and the trainer's loss scaling (dp / global
count) keeps the update the exact global-batch mean however a batch is dealt.

- `parallel.batch_shares = [3, 1]`: fixed shares.
- Under a pipeline (pp > 1) every share is a multiple of microbatches x grad_accum, so each replica's
  schedule splits it evenly (rounded to that unit, largest remainder); the replica's stages move as one.
- `parallel.balance = "speed"`: a short probe before the first step (timed forward passes in
  eval mode without gradients: no state changes) sets the starting shares, unless
  `batch_shares` gives them. At every log step each rank's samples and busy CPU seconds of the
  window (health's step timer: waiting in a collective does not count) are gathered, so every
  rank updates the same running estimate of samples per busy second (halfway towards each
  window's figure) from the same numbers. Shares proportional to it make the ranks' busy time
  per step equal (fixed costs included); they are taken only when more than
  `balance_threshold` of a batch would move. Every rank keeps at least one sample of a full
  batch, so its speed stays measured. Each change is a `{"kind": "balance"}` record in
  metrics.jsonl and a console line.

Under `balance = "speed"` the shares and the estimate are a checkpoint part: a restart goes on
with the checkpoint's shares. Speeds measured after it are new measurements, so a restarted run
may re-balance at other steps than an uninterrupted one: the weights then agree to rounding
(another dealing of the same batches), not bit for bit. Fixed shares are bit-identical.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from shoal.config import JobConfig
from shoal.data import BatchPlan, fetch
from shoal.data.batches import to_device
from shoal.data.partition import split_sizes
from shoal.distributed.collectives import TrainingGroup
from shoal.distributed.mesh import ParallelDims

PROBE_PASSES = 3
SMOOTHING = 0.5  # weight of the newest window in the running speed estimate


def shares_for(batch: int, speeds: list[float], minimum: int = 1) -> list[int]:
    """Sample counts proportional to `speeds` (largest remainder) that sum to `batch`, none below `minimum`."""
    n = len(speeds)
    floored: set[int] = set()
    while True:
        rest = [i for i in range(n) if i not in floored]
        sizes = [minimum] * n
        for i, size in zip(rest, split_sizes(batch - minimum * len(floored), [speeds[i] for i in rest])):
            sizes[i] = size
        low = [i for i in rest if sizes[i] < minimum]
        if not low:
            return sizes
        floored.update(low)


def share_unit(dims: ParallelDims, grad_accum: int) -> int:
    """Samples every share is a multiple of: a pipeline replica's micro-batches x grad_accum (1 without a pipeline)."""
    return dims.microbatches * grad_accum if dims.pp > 1 else 1


def in_units(batch: int, weights: list[float], unit: int) -> list[int]:
    """Sample counts proportional to `weights` (largest remainder), each a multiple of `unit` (a pipeline replica's
    micro-batches x grad_accum, so its schedule splits every share evenly), summing to `batch`."""
    return [k * unit for k in split_sizes(batch // unit, weights)]


def moved(old: list[int], new: list[int]) -> float:
    """The fraction of a batch that changes hands between two share lists."""
    return sum(abs(a - b) for a, b in zip(old, new)) / (2 * max(sum(old), 1))


class Balance:
    """One per rank; every rank holds the same shares. `deal` replaces `plan.step` in the loop."""

    def __init__(self, cfg: JobConfig, dims: ParallelDims, group: TrainingGroup, dp_rank: int, busy: Callable[[], float],
                 log: Callable[[dict], None], is_main: bool):
        p = cfg.parallel
        self.batch, self.ranks, self.dp_rank, self.group = cfg.train.global_batch_size, dims.dp_size, dp_rank, group
        self.busy, self.log, self.is_main = busy, log, is_main
        self.configured = bool(p.batch_shares)
        self.measure = p.balance == "speed" and self.ranks > 1
        self.active = self.configured or self.measure
        self.threshold = p.balance_threshold
        self.unit = share_unit(dims, cfg.train.grad_accum)  # shares a pipeline splits evenly
        self.shares = in_units(self.batch, p.batch_shares or [1] * self.ranks, self.unit)
        self.speeds = [0.0] * self.ranks  # samples per busy second of each data-parallel rank (0: not measured)
        self.windows = 0  # log windows measured so far
        self.restored = False
        self._start_window()

    def _start_window(self) -> None:
        self.samples, self.busy_mark = 0, self.busy()

    def deal(self, plan: BatchPlan, epoch: int, step: int) -> list[np.ndarray]:
        """Every rank's indices at (epoch, step), split by the current shares (equal parts when inactive)."""
        return plan.step(epoch, step, self.shares if self.active else None)

    def count(self, batches: list) -> int:
        """The samples this rank computes in a step (its micro-batches): the speed estimate's numerator."""
        mine = sum(len(mb) for mb in batches)
        self.samples += mine
        return mine

    def begin(self, step: int, layout, train_set: Dataset, device: torch.device, slow_hook: Callable[[int], None] | None) -> None:
        """Before this attempt's first step (collective under balance = "speed"): the shares it starts with."""
        if not self.active:
            return
        if self.restored:
            self._record(step, "resume")
        elif self.measure and not self.configured:
            self.speeds = self._probe(layout, train_set, device, slow_hook)
            self.shares = self._shares_for(self.speeds) if all(v > 0 for v in self.speeds) else self.shares
            self._record(step, "probe")
        else:
            self._record(step, "config")
        self._start_window()

    def _shares_for(self, speeds: list[float]) -> list[int]:
        return [k * self.unit for k in shares_for(self.batch // self.unit, speeds)]

    def _probe(self, layout, train_set: Dataset, device: torch.device, slow_hook) -> list[float]:
        """Samples per busy second of timed forward passes on an equal share (eval mode, no gradients, no RNG)."""
        equal = -(-self.batch // self.ranks)
        n = max(min(-(-equal // self.unit) * self.unit, len(train_set) // self.unit * self.unit), self.unit)
        x, y = fetch(train_set, np.arange(n))
        x, y = to_device(x, device), y.to(device)  # a dict for transformers-style batches
        layout.train(False)
        try:
            with torch.no_grad():
                layout.predict(x, y)  # warm-up, not timed
                t0 = time.process_time()
                for _ in range(PROBE_PASSES):
                    if slow_hook is not None:
                        slow_hook(n)
                    layout.predict(x, y)
                busy = time.process_time() - t0
        finally:
            layout.train(True)
        return self._gathered(PROBE_PASSES * n, busy)

    def _gathered(self, samples: int, busy: float) -> list[float]:
        """Every data-parallel rank's samples per busy second (the slowest of its peers; nan where unmeasured)."""
        speeds = [math.nan] * self.ranks
        for d, s, b in self.group.gather([float(self.dp_rank), float(samples), busy]):
            v = s / b if s > 0 and b > 0 else math.nan
            d = int(d)
            speeds[d] = v if math.isnan(speeds[d]) else min(speeds[d], v)
        return speeds

    def after_log(self, step: int) -> None:
        """At a log step (collective under balance = "speed"): fold the window into the estimate, maybe re-balance."""
        if not self.measure:
            return
        window = self._gathered(self.samples, self.busy() - self.busy_mark)
        self._start_window()
        first = self.windows == 0  # the probe only chose the starting shares: forward passes run faster than steps
        self.speeds = [old if math.isnan(new) else new if first or old <= 0 else old + SMOOTHING * (new - old)
                       for old, new in zip(self.speeds, window)]
        self.windows += 1
        if not all(v > 0 for v in self.speeds):
            return
        target = self._shares_for(self.speeds)
        if moved(self.shares, target) > self.threshold:
            self.shares = target
            self._record(step, "measured")

    def _record(self, step: int, reason: str) -> None:
        self.log({"kind": "balance", "step": step, "shares": list(self.shares), "speeds": [float(v) for v in self.speeds],
                  "reason": reason})
        if self.is_main:
            speeds = " / ".join(f"{v:,.0f}" for v in self.speeds) if all(v > 0 for v in self.speeds) else "not measured"
            print(f"balance @ step {step}: shares {self.shares} of {self.batch} samples ({reason}; samples per busy second: {speeds})",
                  file=sys.stderr, flush=True)

    def state_dict(self) -> dict:
        return {"shares": list(self.shares), "speeds": list(self.speeds), "windows": self.windows}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shares"]) != self.ranks or sum(state["shares"]) != self.batch:
            return  # written for another batch size: start afresh
        self.shares, self.speeds, self.windows = list(state["shares"]), list(state["speeds"]), int(state["windows"])
        self.restored = True
        self._start_window()

"""Local updates, then a weighted average of parameters: the shared piece of local SGD, DiLoCo and FedAvg.

Between averagings every rank steps its own replica with its own optimizer on its own batches
(the loss is each rank's local mean). An averaging is one all-reduce of every parameter and
floating buffer, each rank's contribution multiplied by its weight first, so the result is
sum_k w_k * theta_k with weights that sum to one. A strategy says when (`due`) and with which
weight; `combine` may turn the average into something else (DiLoCo's outer step).

Replicas differ between averagings, so each rank's replica and optimizer state are a checkpoint
part of that rank: a restart on the same world size is bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shoal.errors import ShoalError
from shoal.sync.base import SyncContext, SyncStrategy


class LocalUpdates(SyncStrategy):
    grads_synced = False

    def __init__(self, ctx: SyncContext):
        super().__init__(ctx)
        if ctx.cfg.comm.compression != "none":
            raise ShoalError(f"comm.compression = '{ctx.cfg.comm.compression}' compresses gradient all-reduce, which sync = "
                             f"'{ctx.cfg.sync}' does not use (parameters travel in float32): set comm.compression = 'none'")
        self.samples = 0  # this rank's samples since the last averaging
        self.rounds = 0  # averagings so far
        self.bytes_total = 0  # what this rank put into the averaging all-reduces
        self.window_steps = self.window_bytes = 0
        self.last_step = 0
        self.module: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def total_steps(self, plan) -> int:
        self.last_step = super().total_steps(plan)
        return self.last_step

    def loss_scale(self, mine: int, total: int) -> float:
        self.samples += mine
        return 1.0 / mine if mine else 0.0

    def attach(self, layout, optimizer: torch.optim.Optimizer, score=None) -> None:
        self.module, self.optimizer = layout.model, optimizer

    def tensors(self) -> list[torch.Tensor]:
        """What an averaging combines: every parameter and floating-point buffer (batch-norm statistics)."""
        return [p.data for p in self.module.parameters()] + [b for b in self.module.buffers() if b.is_floating_point()]

    def due(self, step: int) -> bool:
        raise NotImplementedError

    def weight(self) -> float:
        """This rank's unnormalised weight in the coming averaging."""
        raise NotImplementedError

    def combine(self, averaged: list[torch.Tensor]) -> None:
        """Write the averaged values into the replica (DiLoCo overrides: an outer optimizer step)."""
        for t, a in zip(self.tensors(), averaged):
            t.copy_(a)

    def after_step(self, step: int, layout) -> None:
        self.window_steps += 1
        if self.due(step) or step == self.last_step:  # the last step always ends agreed: one model comes out
            self.average()

    def average(self) -> None:
        group = self.ctx.group
        mine = float(self.weight())
        total = float(group.sum([mine])[0])
        if total <= 0:  # nobody trained since the last averaging (every sampled client empty): nothing to combine
            self.samples = 0
            return
        tensors = self.tensors()
        flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors]) * (mine / total)
        if group.size > 1:
            torch.distributed.all_reduce(flat, group=group.group)
            sent = flat.numel() * flat.element_size()
            self.bytes_total += sent
            self.window_bytes += sent
        averaged, at = [], 0
        for t in tensors:
            averaged.append(flat[at : at + t.numel()].view_as(t).to(t.dtype))
            at += t.numel()
        self.combine(averaged)
        self.rounds += 1
        self.samples = 0

    def stats(self) -> dict[str, float]:
        """comm_bytes: per step over the log window; comm_rounds and comm_bytes_total: since the start of the run."""
        steps = max(self.window_steps, 1)
        out = {"comm_bytes": self.window_bytes / steps, "comm_rounds": self.rounds, "comm_bytes_total": self.bytes_total}
        self.window_steps = self.window_bytes = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"replica": [t.detach().clone() for t in self.tensors()], "optimizer": self.optimizer.state_dict(),
                "samples": self.samples, "rounds": self.rounds, "bytes_total": self.bytes_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for t, saved in zip(self.tensors(), state["replica"]):
            t.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.samples, self.rounds, self.bytes_total = state["samples"], state["rounds"], state["bytes_total"]

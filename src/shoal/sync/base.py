"""SyncStrategy: how replicas agree on one update. The trainer calls its hooks in this order, every step:

    batch_plan(train_set) / total_steps once: which samples each rank reads at each step (federated: its own only)
    wrap(model, sample)                 once, before training (e.g. DDP around a replica); sample: one micro-batch
    attach(layout, optimizer, score)    once, after the optimizer is built (local updates keep per-rank state);
                                        score(n): this replica's accuracy on n evaluation samples (None: no eval set)
    run_training(fit)                   once: runs the loop, `fit(0)` (ps.rejoin: in a child that rejoins when it dies)
    first_step()                        steps done before the loop starts without a checkpoint (0; a rejoining worker's)
    loss_scale(mine, total)             every step: the factor of this rank's loss sum (global mean by default)
    forward/backward per micro-batch    the layout defers gradient reduction to the last one
    after_backward(layout)              gradients are complete on this rank
    grad_norm(layout, max_norm)         clip; the returned norm is the same on every training rank
    step(optimizer)                     apply the update
    after_step(step, layout)            e.g. average parameters every H steps
    stats()                             fields for the training record, at log steps
    events()                            records of their own for metrics.jsonl (e.g. a choice made), at log steps
    checkpoint_meta()                   what a restart must know before `wrap`; handed back through `before_resume(meta)`
    check_checkpoint(cfg, world, m, p)  before any worker starts (`--resume`) and on every rank: can it continue from it?
    state_dict() / load_state_dict()    in every checkpoint, with `parts()`

A new strategy is one file with `@SYNC.register("name")` on its class; the job picks it with
`sync = "name"` (a module of the user's is named in `plugins`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shoal.config import JobConfig
from shoal.data import BatchPlan, plan_for
from shoal.data import total_steps as steps_of_plan
from shoal.distributed import DistEnv
from shoal.distributed.collectives import TrainingGroup
from shoal.distributed.mesh import ParallelDims
from shoal.errors import ShoalError
from shoal.registry import Registry


@dataclass(frozen=True)
class SyncContext:
    cfg: JobConfig
    env: DistEnv
    dims: ParallelDims
    group: TrainingGroup


class SyncStrategy:
    supports_model_parallel = False  # True: it composes with fsdp/tp/pp (their collectives stay inside the model)
    grads_synced = True  # False: after backward each rank holds only its own gradient (local updates)
    trains = True  # False on ranks that serve the others (a parameter server's servers): `fit` calls `serve` there
    trainer_checkpoints = True  # False: the serving ranks hold the run's state and write and load checkpoints alone
    # (ps.rejoin); the trainer then neither saves nor loads one: it goes on from `first_step()`

    @classmethod
    def training_group(cls, cfg: JobConfig) -> TrainingGroup:
        """The ranks that run the training loop; every rank calls this (a strategy may build a group here)."""
        return TrainingGroup.world()

    def serve(self, *args, **kwargs):
        """What a rank with `trains = False` runs instead of the training loop; returns (steps, wall seconds)."""
        raise NotImplementedError

    def __init__(self, ctx: SyncContext):
        self.ctx = ctx
        self.resumed: dict[str, Any] = {}  # the checkpoint_meta() of the checkpoint this run continues from
        if ctx.dims.model_parallel and not self.supports_model_parallel:
            raise ShoalError(f"sync = '{ctx.cfg.sync}' needs parallel.fsdp = tp = pp = 1 (layout here: {ctx.dims.describe()})")

    def batch_plan(self, n_samples: int, dataset) -> BatchPlan:
        """Which samples each data-parallel rank reads at each step; `dataset` for plans that deal by label or by row group."""
        return plan_for(self.ctx.cfg, n_samples, self.ctx.dims.dp_size, dataset)  # dealt over replicas, not tp/pp peers

    def total_steps(self, plan: BatchPlan) -> int:
        return steps_of_plan(self.ctx.cfg, plan)

    def loss_scale(self, mine: int, total: int) -> float:
        """Factor of this rank's loss sum over `mine` samples of a `total`-sample global batch. The reduce averages
        over ranks, so dp / total makes the update the exact global-batch mean; local updates use 1 / mine."""
        return self.ctx.dims.dp_size / total

    def attach(self, layout, optimizer: torch.optim.Optimizer, score: Callable[[int], float] | None = None) -> None:
        pass

    def wrap(self, model: nn.Module, sample: torch.Tensor | None = None) -> nn.Module:
        """A whole replica (plain data parallel); model-parallel layouts are built by `parallel.build`."""
        return model.to(self.ctx.env.device)

    def run_training(self, fit: Callable[[int], Any]) -> Any:
        """How the trainer's loop runs: `fit(0)` here; a strategy may run it elsewhere (ps.rejoin: in a child process
        forked again, `fit(k)`, when it dies)."""
        return fit(0)

    def first_step(self) -> int:
        """Steps already done when the loop starts without a checkpoint (a rejoining parameter-server worker's)."""
        return 0

    def after_backward(self, layout) -> None:
        pass

    def grad_norm(self, layout, max_norm: float) -> float:
        norm = layout.clip_grad_norm_(max_norm)
        if not self.grads_synced:  # local gradients: agree on the worst, so every rank skips a non-finite step together
            norm = float(self.ctx.group.max([norm])[0])
        return norm

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def after_step(self, step: int, layout) -> None:
        pass

    def stats(self) -> dict[str, float]:
        return {}

    def events(self) -> list[dict[str, Any]]:
        return []

    def checkpoint_meta(self) -> dict[str, Any]:
        return {}

    @classmethod
    def check_checkpoint(cls, cfg: JobConfig, world: int, meta: dict[str, Any], path: Path) -> None:
        """Refuse (one line) a checkpoint this strategy cannot continue from consistently; `meta`: its marker."""

    def before_resume(self, meta: dict[str, Any]) -> None:
        """Called before `wrap` when the run continues from a checkpoint, with the marker it wrote."""
        self.resumed = meta

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def parts(self) -> dict[str, Any]:
        """Named stateful parts for checkpoints (each with state_dict/load_state_dict); the strategy itself first."""
        return {"sync": self}


SYNC: Registry[type[SyncStrategy]] = Registry("sync strategy", "sync")

"""How a parallelized model takes a step: what the trainer calls, whatever the layout.

`forward_backward` returns this rank's share of the global-batch mean loss (shares summed
over the world give the mean), so the trainer logs one number without knowing who holds
the loss: every rank under DDP, each tensor-parallel peer once, only the last pipeline stage.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from shoal.data.batches import batch_len, call_model
from shoal.distributed import DistEnv
from shoal.distributed.mesh import ParallelDims
from shoal.parallel import gather, hf_pipeline, norm


def _labels(loss_fn) -> bool:
    """Dict batches keep `labels` in the model's inputs only when the loss is the model's own."""
    return getattr(loss_fn, "wants_labels", False)


class Layout:
    # True during a step that builds state of its own (a pipeline schedule's first step infers shapes with
    # autograd.grad): monitors that trace a step (the mfu FLOP counter) wait for a later one.
    building = False

    def __init__(self, modules: list[nn.Module], dims: ParallelDims, env: DistEnv, key_order: list[str]):
        self.modules, self.dims, self.env, self.key_order = modules, dims, env, key_order
        self.info: dict = {"layout": dims.describe()}

    @property
    def model(self) -> nn.Module:
        return self.modules[0]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]

    @property
    def dp_rank(self) -> int:
        return self.dims.dp_rank(self.env.rank)

    @property
    def holds_output(self) -> bool:
        """This rank computes the model's output (and so the loss)."""
        return True

    @property
    def scores_output(self) -> bool:
        """This rank scores evaluation batches: one output holder per replica (tensor-parallel coordinate 0)."""
        return self.holds_output and self.dims.coords(self.env.rank)["tp"] == 0

    def eval_batch(self, requested: int, train_microbatch: int) -> int:
        """Samples per evaluation forward pass on each replica."""
        return requested

    def train(self, mode: bool = True) -> None:
        for m in self.modules:
            m.train(mode)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, scale: float, sync: bool) -> float:
        raise NotImplementedError

    def predict(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Model output on ranks that hold it (None elsewhere); a collective among model-parallel peers."""
        return call_model(self.model, x)

    def prepare_resume(self, x, y, loss_fn: Callable) -> bool:
        """Called in a resumed run before its checkpoint is loaded, so that the steps after it take the path an
        uninterrupted run's took; True when it ran a collective step whose counts should be dropped."""
        return False

    def clip_grad_norm_(self, max_norm: float) -> float:
        return norm.clip_grad_norm_(self.parameters(), max_norm, self.dims)

    def settle_grads(self) -> None:
        """Reduce gradients DTensor left pending (Partial: sequence-parallel norms) to their parameter's placement."""
        for p in self.parameters():
            g = p.grad
            if isinstance(g, DTensor) and any(pl.is_partial() for pl in g.placements):
                p.grad = g.redistribute(p.device_mesh, p.placements)

    def full_state_dict(self) -> dict | None:
        return gather.full_state_dict(self.modules, self.dims, self.env.rank, self.key_order)

    def unwrap(self) -> nn.Module:
        return self.model


class Replicated(Layout):
    """DDP: every rank a whole replica (the path data parallel always took, numerics unchanged)."""

    def forward_backward(self, x, y, loss_fn, scale, sync):
        with self.model.no_sync() if not sync and hasattr(self.model, "no_sync") else contextlib.nullcontext():
            loss = loss_fn(call_model(self.model, x, _labels(loss_fn)), y, reduction="sum") * scale
            loss.backward()
        return loss.item() / self.env.world_size

    def prepare_resume(self, x, y, loss_fn):
        """DDP's first iteration lays its gradient buckets out in parameter order, later ones in gradient-ready order,
        and with more than two ranks the ring all-reduce's order of summation follows an element's offset in its
        bucket. A resumed run's first step would be DDP's first iteration where the uninterrupted run's was not, so
        it would differ by a rounding. One throw-away forward and backward on the same graph lets DDP rebuild its
        buckets at the next forward, as it did at the uninterrupted run's second step. Its gradients are dropped;
        whatever else it touched (weights stay, buffers, RNG draws, compressor state) the checkpoint then overwrites."""
        if not isinstance(self.model, DistributedDataParallel) or self.model._has_rebuilt_buckets:
            return False
        loss = loss_fn(call_model(self.model, x, _labels(loss_fn)), y, reduction="sum") * 0.0
        loss.backward()
        for p in self.model.parameters():
            p.grad = None
        return True

    def clip_grad_norm_(self, max_norm: float) -> float:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)  # DDP averaged the gradients: every rank holds the whole, same norm
        if math.isfinite(max_norm):
            torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), max_norm, norm)
        return float(norm)

    def full_state_dict(self) -> dict | None:
        return {k: v.detach().cpu() for k, v in self.unwrap().state_dict().items()} if self.env.is_main else None

    def unwrap(self) -> nn.Module:
        return getattr(self.model, "module", self.model)


class Sharded(Layout):
    """FSDP2 and/or tensor parallel: one module, collectives inside forward and backward."""

    def forward_backward(self, x, y, loss_fn, scale, sync):
        if isinstance(self.model, FSDPModule):
            self.model.set_requires_gradient_sync(sync)
        loss = loss_fn(call_model(self.model, x, _labels(loss_fn)), y, reduction="sum") * scale
        loss.backward()
        if sync:
            self.settle_grads()
        return loss.item() / (self.dims.dp_size * self.dims.tp)


class Pipelined(Layout):
    """Pipeline stages driven by a schedule, which runs forward and backward of all micro-batches itself.

    A schedule fixes its micro-batch shapes at its first step (the stages infer them once), so there is one per
    batch size: batch shares give replicas different sizes, `balance = "speed"` changes them, evaluation pads to
    its own. Every stage rank of a pipeline sees the same sizes at the same steps, so they switch together.
    Training and evaluation keep schedules of their own: torch re-infers a schedule's shapes (and exchanges
    them) whenever it switches between forward-only and forward-backward."""

    KEPT = 6  # schedules kept at once (each holds its stages' receive buffers)

    def __init__(self, modules, dims, env, key_order, make_schedule: Callable[[], tuple], micro_loss: MicroLoss):
        super().__init__(modules, dims, env, key_order)
        self.make_schedule, self.micro_loss = make_schedule, micro_loss
        self.schedules: dict[tuple[int, bool], tuple] = {}
        self.unclaimed = make_schedule()  # the first batch size's: no shapes until its first step
        self.first = any(s.is_first for s in self.unclaimed[1])
        self.last = any(s.is_last for s in self.unclaimed[1])

    def _schedule(self, batch: int, training: bool):
        """The (schedule, stages) for training or evaluation batches of `batch` samples, built at first use (then
        `building` until its first step is over: it infers the stages' shapes)."""
        key = (batch, training)
        self.building = key not in self.schedules
        if self.building:
            if len(self.schedules) >= self.KEPT:
                self.schedules.pop(next(iter(self.schedules)))
            self.schedules[key] = self.unclaimed or self.make_schedule()
            self.unclaimed = None
        return self.schedules[key]

    @property
    def holds_output(self) -> bool:
        return self.last

    def forward_backward(self, x, y, loss_fn, scale, sync):
        self.micro_loss.loss_fn, self.micro_loss.scale = loss_fn, scale
        losses: list[torch.Tensor] = []
        args = (hf_pipeline.pack(x),) if self.first else ()  # dict batches enter stage 0 as one tensor
        self._schedule(batch_len(x), True)[0].step(*args, target=y if self.last else None, losses=losses if self.last else None)
        self.building = False
        if sync:
            self.settle_grads()
        if not self.last:
            return 0.0
        return float(sum(l.item() for l in losses)) / (self.dims.dp_size * self.dims.tp)

    def eval_batch(self, requested: int, train_microbatch: int) -> int:
        """Whole training batches, rounded to the micro-batch count (shares need not divide it)."""
        micro = self.dims.microbatches
        return max(train_microbatch // micro, 1) * micro

    def predict(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        args = (hf_pipeline.pack(x),) if self.first else ()
        out = self._schedule(batch_len(x), False)[0].eval(*args, target=y if self.last else None)
        self.building = False
        return out if self.last else None


class MicroLoss:
    """The schedule's loss_fn: the trainer's summed loss times the step's normalisation."""

    def __init__(self):
        self.loss_fn: Callable | None = None
        self.scale = 1.0

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, target, reduction="sum") * self.scale

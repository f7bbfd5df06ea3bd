"""All-reduce (the default): every replica's gradients are averaged before the same update on every rank.

Plain data parallel goes through DDP with the job's compressor (comm.compression); model-parallel
layouts reduce inside FSDP and DTensor, so there is nothing left to do here.
"""

from __future__ import annotations

import torch
from torch import nn

from shoal.compress import Compressor, auto
from shoal.compress import build as build_compressor
from shoal.errors import ShoalError
from shoal.parallel import ddp, sharded
from shoal.sync.base import SYNC, SyncContext, SyncStrategy


@SYNC.register("allreduce")
class AllReduce(SyncStrategy):
    supports_model_parallel = True

    def __init__(self, ctx: SyncContext):
        super().__init__(ctx)
        comm, dims = ctx.cfg.comm, ctx.dims
        if dims.model_parallel and comm.compression not in ("none", "auto", *sharded.REDUCE_DTYPES):
            raise ShoalError(f"comm.compression = '{comm.compression}' works on DDP's all-reduce, which layout {dims.describe()} does not use "
                             f"(parallel.fsdp, tp or pp > 1): there only none, fp16 and bf16 (FSDP's reduce dtype) apply")
        method = "none" if dims.model_parallel else comm.compression  # there fp16/bf16 are FSDP's reduce dtype (parallel/sharded.py)
        self.auto = method == "auto"
        if self.auto:  # chosen in wrap: measured, or the choice the checkpoint of a restart recorded
            method = "none"
        self.method = method
        self.compressor: Compressor = build_compressor(method, comm, ctx.group.group, ctx.cfg.seed)
        self.pending: list[dict] = []

    window_steps = 0
    rounds = 0  # gradient all-reduces so far: one per step, the count averaging strategies cut
    grad_bytes = 0  # what DDP's own fp32 all-reduce (or FSDP's reduce) sends per step (no compressor hook to count it)
    grad_ratio = 1.0

    def wrap(self, model: nn.Module, sample: torch.Tensor | None = None) -> nn.Module:
        if self.auto and "compression" in self.resumed:
            self.method = self.resumed["compression"]
            self.compressor = build_compressor(self.method, self.ctx.cfg.comm, self.ctx.group.group, self.ctx.cfg.seed)
        elif self.auto and self.ctx.group.size > 1 and sample is not None:
            self._choose(model.to(self.ctx.env.device), sample.to(self.ctx.env.device))
        if self.ctx.group.size > 1:
            self.grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        return ddp.apply(model, self.ctx.env, self.compressor, self.ctx.cfg.comm.bucket_mb)

    def _choose(self, model: nn.Module, sample: torch.Tensor) -> None:
        comm = self.ctx.cfg.comm
        found = auto.measure(model, sample, self.ctx.cfg.train.grad_accum, self.ctx.group)
        predicted = auto.predict(found, model, comm)
        self.method, why = auto.choose(predicted, found)
        self.compressor = build_compressor(self.method, comm, self.ctx.group.group, self.ctx.cfg.seed)
        self.pending.append({"kind": "compression", "method": self.method, "why": why, "measured": found,
                             "predicted_step_s": predicted, "message": f"comm.compression = auto chose {self.method}: {why}"})

    def events(self) -> list[dict]:
        out, self.pending = self.pending, []
        return out

    def attach(self, layout, optimizer, score=None) -> None:
        if self.ctx.dims.model_parallel:
            self.grad_bytes, self.grad_ratio = sharded_grad_bytes(layout.parameters(), self.ctx.dims, self.ctx.cfg.comm.compression)

    def checkpoint_meta(self) -> dict:
        return {"compression": self.method} if self.auto else {}

    def after_step(self, step: int, layout) -> None:
        self.window_steps += 1
        self.rounds = step

    def stats(self) -> dict[str, float]:
        """comm_bytes: what this rank put into the gradient all-reduce per step (mean over the log window);
        comm_rounds: all-reduce rounds since the start."""
        steps, self.window_steps = max(self.window_steps, 1), 0
        if not self.compressor.uses_hook:
            return {"comm_bytes": self.grad_bytes, "compression_ratio": self.grad_ratio, "comm_rounds": self.rounds} if self.grad_bytes else {}
        counted = self.compressor.stats()
        return {**counted, "comm_bytes": counted["comm_bytes"] / steps, "comm_rounds": self.rounds}

    def parts(self) -> dict:
        return {**super().parts(), "compressor": self.compressor}


def sharded_grad_bytes(params, dims, compression: str) -> tuple[int, float]:
    """Bytes a model-parallel rank hands to the gradient reduction per step, and the ratio to fp32: FSDP's
    reduce-scatter of its (tensor-parallel-local) unsharded gradients in the reduce dtype, plus the
    all-reduce of its shard over dp replicas. FSDP's padding of uneven shards is not counted."""
    dtype = sharded.REDUCE_DTYPES.get(compression)
    sent = fp32 = 0
    for p in params:
        if not p.requires_grad:
            continue
        local = p.to_local().numel() if hasattr(p, "to_local") else p.numel()
        width = (dtype or p.dtype).itemsize
        per_rank = local * (dims.fsdp if dims.fsdp > 1 else 0) + (local if dims.dp > 1 else 0)
        sent += per_rank * width
        fp32 += per_rank * 4
    return sent, (fp32 / sent if sent else 1.0)

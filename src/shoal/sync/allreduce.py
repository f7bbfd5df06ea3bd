"""All-reduce (the default): every replica's gradients are averaged before the same update on every rank.

Plain data parallel goes through DDP with the job's compressor (comm.compression); model-parallel
layouts reduce inside FSDP and DTensor, so there is nothing left to do here.
"""

from __future__ import annotations

from torch import nn

from shoal.compress import COMPRESSORS, Compressor
from shoal.errors import ShoalError
from shoal.parallel import ddp, sharded
from shoal.sync.base import SYNC, SyncContext, SyncStrategy


@SYNC.register("allreduce")
class AllReduce(SyncStrategy):
    supports_model_parallel = True

    def __init__(self, ctx: SyncContext):
        super().__init__(ctx)
        comm, dims = ctx.cfg.comm, ctx.dims
        if dims.model_parallel and comm.compression not in ("none", *sharded.REDUCE_DTYPES):
            raise ShoalError(f"comm.compression = '{comm.compression}' works on DDP's all-reduce, which layout {dims.describe()} does not use "
                             f"(parallel.fsdp, tp or pp > 1): there only none, fp16 and bf16 (FSDP's reduce dtype) apply")
        method = "none" if dims.model_parallel else comm.compression  # there fp16/bf16 are FSDP's reduce dtype (parallel/sharded.py)
        self.compressor: Compressor = COMPRESSORS.get(method)(comm, ctx.group.group)

    window_steps = 0
    grad_bytes = 0  # what DDP's own fp32 all-reduce sends per step (no compressor hook to count it)

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.ctx.group.size > 1:
            self.grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        return ddp.apply(model, self.ctx.env, self.compressor, self.ctx.cfg.comm.bucket_mb)

    def after_step(self, step: int, layout) -> None:
        self.window_steps += 1

    def stats(self) -> dict[str, float]:
        """comm_bytes: what this rank put into the gradient all-reduce per step (mean over the log window)."""
        steps, self.window_steps = max(self.window_steps, 1), 0
        if not self.compressor.uses_hook:
            return {"comm_bytes": self.grad_bytes, "compression_ratio": 1.0} if self.grad_bytes else {}
        counted = self.compressor.stats()
        return {**counted, "comm_bytes": counted["comm_bytes"] / steps}

    def parts(self) -> dict:
        return {**super().parts(), "compressor": self.compressor}

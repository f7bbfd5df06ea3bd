"""All-reduce (the default): every replica's gradients are averaged before the same update on every rank.

Plain data parallel goes through DDP with the job's compressor (comm.hook); model-parallel
layouts reduce inside FSDP and DTensor, so there is nothing left to do here.
"""

from __future__ import annotations

from torch import nn

from shoal.compress import COMPRESSORS, Compressor
from shoal.errors import ShoalError
from shoal.parallel import ddp
from shoal.sync.base import SYNC, SyncContext, SyncStrategy


@SYNC.register("allreduce")
class AllReduce(SyncStrategy):
    supports_model_parallel = True

    def __init__(self, ctx: SyncContext):
        super().__init__(ctx)
        comm, dims = ctx.cfg.comm, ctx.dims
        if dims.model_parallel and comm.hook != "none":
            raise ShoalError(f"comm.hook = '{comm.hook}' compresses DDP's all-reduce; it needs parallel.fsdp = tp = pp = 1 "
                             f"(layout here: {dims.describe()})")
        self.compressor: Compressor = COMPRESSORS.get(comm.hook)(comm, ctx.group.group)

    def wrap(self, model: nn.Module) -> nn.Module:
        return ddp.apply(model, self.ctx.env, self.compressor, self.ctx.cfg.comm.bucket_mb)

    def stats(self) -> dict[str, float]:
        return self.compressor.stats() if self.compressor.uses_hook else {}

    def parts(self) -> dict:
        return {**super().parts(), "compressor": self.compressor}

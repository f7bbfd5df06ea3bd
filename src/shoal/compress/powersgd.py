"""PowerSGD (Vogels et al., 2019) as torch implements it, with its state checkpointed.

Its error feedback, warm-start matrices, random generator and iteration count decide every
later step, so they go into checkpoints: a restarted run continues bit-identical.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

from shoal.compress.base import COMPRESSORS, Compressor
from shoal.config import CommConfig


@COMPRESSORS.register("powersgd")
class PowerSGD(Compressor):
    def __init__(self, cfg: CommConfig, group: dist.ProcessGroup | None = None):
        super().__init__(cfg, group)
        self.state = powerSGD_hook.PowerSGDState(
            process_group=group,
            matrix_approximation_rank=cfg.powersgd_rank,
            start_powerSGD_iter=max(cfg.powersgd_warmup, 2),  # torch requires > 1 with error feedback
        )

    def reduce(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        self.count(*self._bytes(bucket))
        return powerSGD_hook.powerSGD_hook(self.state, bucket)

    def _bytes(self, bucket: dist.GradBucket) -> tuple[int, int]:
        """(fp32 bytes, bytes sent): matrices worth compressing travel as P and Q, the rest whole (torch's rule)."""
        raw = bucket.buffer().numel() * bucket.buffer().element_size()
        if self.state.iter < self.state.start_powerSGD_iter:
            return raw, raw
        wire = 0
        for grad in bucket.gradients():
            size = grad.element_size()
            if grad.dim() <= 1:
                wire += grad.numel() * size
                continue
            rows, cols = grad.shape[0], math.prod(grad.shape[1:])
            rank = min(rows, cols, self.state.matrix_approximation_rank)
            worth, whole, compressed = powerSGD_hook._should_compress(rows, cols, rank, self.state.min_compression_rate)
            wire += (compressed if worth else whole) * size
        return raw, wire

    def state_dict(self) -> dict:
        return {slot: getattr(self.state, slot) for slot in self.state.__slots__ if slot != "process_group"}

    def load_state_dict(self, state: dict) -> None:
        for slot, value in state.items():
            setattr(self.state, slot, value)

"""Compressor: how one DDP gradient bucket travels. One DDP hook (ddp_hook.py) serves every compressor.

A compressor encodes the bucket, all-reduces the encoded tensor and decodes it back into the
bucket; it counts the bytes it put on the wire (the payload of its collectives, per rank) and
keeps whatever state it needs (error feedback, seeds) where checkpoints can find it.
A new compressor is one file with `@COMPRESSORS.register("name")` on its class.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from shoal.config import CommConfig
from shoal.registry import Registry


class Compressor:
    """The default `reduce` is encode -> all_reduce (sum) -> decode; methods with other collectives override it."""

    uses_hook = True  # False: DDP's own all-reduce is left alone (nothing to encode)
    # True when `reduce` issues further collectives from a future's callback (torch's PowerSGD does): with several
    # buckets in flight, ranks could then issue them in different orders (gloo: "Received data size doesn't match"),
    # so the hook starts each bucket once the one before it is done (ddp_hook.py, `InOrder`).
    in_order = False

    def __init__(self, cfg: CommConfig, group: dist.ProcessGroup | None = None, seed: int = 0):
        self.cfg, self.group, self.seed = cfg, group, seed  # seed: the job's, so random draws follow `seed =`
        self.wire_bytes = 0  # since the last stats()
        self.raw_bytes = 0

    @property
    def world(self) -> int:
        return dist.get_world_size(self.group)

    def reduce(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        grads = bucket.buffer()
        encoded = self.encode(grads)
        self.count(grads.numel() * grads.element_size(), encoded.numel() * encoded.element_size())
        future = dist.all_reduce(encoded, group=self.group, async_op=True).get_future()
        return future.then(lambda fut: self.decode(fut.value()[0], grads))

    def attach(self, model: nn.Module) -> None:
        """Called once with the replica before DDP wraps it (for state kept per parameter)."""

    def encode(self, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, reduced: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Write the reduced values back into the bucket in place (no second bucket-sized buffer)."""
        grads.copy_(reduced)
        return grads

    def count(self, raw: int, wire: int) -> None:
        self.raw_bytes += raw
        self.wire_bytes += wire

    def stats(self) -> dict[str, float]:
        """Bytes on the wire since the previous call, and the ratio to what plain fp32 would have sent."""
        out = {"comm_bytes": self.wire_bytes, "compression_ratio": self.raw_bytes / self.wire_bytes if self.wire_bytes else 1.0}
        self.wire_bytes = self.raw_bytes = 0
        return out

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


COMPRESSORS: Registry[type[Compressor]] = Registry("compressor", "comm.compression (or comm.hook)")

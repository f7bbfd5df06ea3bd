"""The one DDP communication hook: it hands every bucket to the job's compressor.

No `from __future__ import annotations` here: DDP compares the hook's annotations with the real classes.
"""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from shoal.compress.base import Compressor


def compressor_hook(compressor: Compressor, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    return compressor.reduce(bucket)


def install(ddp: DistributedDataParallel, compressor: Compressor) -> None:
    if compressor.uses_hook:
        ddp.register_comm_hook(compressor, compressor_hook)

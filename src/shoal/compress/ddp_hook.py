"""The one DDP communication hook: it hands every bucket to the job's compressor.

A compressor that issues collectives from a future's callback (`in_order`, PowerSGD) gets its buckets
one after another: bucket k starts when bucket k - 1 has finished, so every rank issues the same
collectives in the same order, and a bucket's communication still runs while backward computes the
gradients of the buckets after it (DDP hands buckets over in index order on every rank).

No `from __future__ import annotations` here: DDP compares the hook's annotations with the real classes.
"""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from shoal.compress.base import Compressor


def compressor_hook(compressor: Compressor, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    return compressor.reduce(bucket)


class InOrder:
    """The compressor, and the future of the last bucket handed to it: the next bucket waits for it."""

    def __init__(self, compressor: Compressor):
        self.compressor = compressor
        self.tail: torch.futures.Future | None = None


def _forward(source: torch.futures.Future, target: torch.futures.Future) -> None:
    try:
        target.set_result(source.value())
    except Exception as err:  # noqa: BLE001 - the bucket's failure reaches DDP through its future
        target.set_exception(err)


def in_order_hook(state: InOrder, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    out: torch.futures.Future[torch.Tensor] = torch.futures.Future()

    def start(previous: torch.futures.Future | None) -> None:
        try:
            if previous is not None:
                previous.value()  # an earlier bucket's failure fails this one too
            reduced = state.compressor.reduce(bucket)
        except Exception as err:  # noqa: BLE001
            out.set_exception(err)
            return
        reduced.add_done_callback(lambda done: _forward(done, out))

    previous, state.tail = state.tail, out
    if previous is None:
        start(None)
    else:
        previous.add_done_callback(start)  # runs at once (in this thread) when the bucket before is already done
    return out


def install(ddp: DistributedDataParallel, compressor: Compressor) -> None:
    if compressor.in_order:
        ddp.register_comm_hook(InOrder(compressor), in_order_hook)
    elif compressor.uses_hook:
        ddp.register_comm_hook(compressor, compressor_hook)

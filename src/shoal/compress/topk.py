"""Top-k and random-k sparsification with error feedback (comm.compression = "topk" | "randk").

Each step, every parameter's gradient (plus what earlier steps did not send, when
`comm.error_feedback` is on) sends k = ceil(comm.topk_ratio x its size) entries, at least one;
the rest stays behind as that parameter's residual. k is per parameter, not per bucket, so what
is picked does not depend on DDP's bucket layout (which changes after the first step and after a
restart): a SIGKILL restart continues bit-identical.

- topk: the k entries of largest magnitude. Ranks pick different entries, so every rank
  all-gathers (indices as int32, values in the gradient's dtype) and sums what the others sent.
  Bytes counted per rank and bucket: k x (4 + value size).
- randk: k entries drawn at random, the same on every rank (a seeded generator, checkpointed,
  draws one seed per step; each parameter's indices come from that seed and its index in the
  model). Since every rank knows the indices, only the values travel, in one all-reduce (sum).
  Bytes counted per rank and bucket: k x value size.

Counted bytes are the payload each rank hands to its collectives (`Compressor.count`), the same
measure as for fp32 all-reduce (numel x 4), so `compression_ratio` compares like with like. What
the network then carries depends on the collective: a ring all-reduce moves about twice its
input per rank, an all-gather delivers world x the input to every rank (so top-k's receive side
grows with the world size).

Both return the mean over ranks of what was sent, as DDP's all-reduce does.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from shoal.compress.base import COMPRESSORS
from shoal.compress.feedback import ErrorFeedback, PerParameter, Piece, StepSeeds, job_stream
from shoal.config import CommConfig


class Sparse(PerParameter):
    """Pick k entries per parameter, keep the rest as error feedback, exchange the picked ones (subclasses)."""

    def __init__(self, cfg: CommConfig, group: dist.ProcessGroup | None = None, seed: int = 0):
        super().__init__(cfg, group, seed)
        self.ratio = cfg.topk_ratio
        self.feedback = ErrorFeedback() if cfg.error_feedback else None

    def k(self, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.ratio * numel)))

    def reduce(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        grads, pieces = bucket.buffer(), self.pieces(bucket)
        if self.feedback is not None:
            self.feedback.add_to(grads, pieces)
        index = torch.cat([self.pick(grads[p.span], p) + p.offset for p in pieces])
        bad = grads.isfinite().logical_not().any()  # a 0-d tensor: no host sync
        values = grads[index].masked_fill_(bad, float("nan"))  # a non-finite gradient reaches the trainer's check on every rank
        if self.feedback is not None:
            residual = grads.clone()
            residual[index] = 0
            self.feedback.keep(residual.masked_fill_(bad, 0.0), pieces)  # and leaves no NaN behind for later steps
        if bucket.is_last():
            self.end_step()
        return self.exchange(grads, index, values)

    def pick(self, grad: torch.Tensor, piece: Piece) -> torch.Tensor:
        raise NotImplementedError

    def exchange(self, grads: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
        raise NotImplementedError

    def end_step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"residuals": self.feedback.state_dict() if self.feedback is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        if self.feedback is not None:
            self.feedback.load_state_dict(state["residuals"])


@COMPRESSORS.register("topk")
class TopK(Sparse):
    def pick(self, grad: torch.Tensor, piece: Piece) -> torch.Tensor:
        return grad.abs().topk(self.k(piece.numel), sorted=False).indices

    def exchange(self, grads, index, values):
        payload = torch.cat([index.to(torch.int32).view(torch.uint8), values.contiguous().view(torch.uint8)])
        self.count(grads.numel() * grads.element_size(), payload.numel())
        gathered = [torch.empty_like(payload) for _ in range(self.world)]
        future = dist.all_gather(gathered, payload, group=self.group, async_op=True).get_future()
        k = index.numel()  # the same on every rank: k depends on the parameters' sizes only

        def decode(fut: torch.futures.Future) -> torch.Tensor:
            fut.wait()  # raises if the collective failed
            total = torch.zeros_like(grads)
            for part in gathered:  # rank order: the same sums on every rank
                total.index_add_(0, part[: 4 * k].view(torch.int32).long(), part[4 * k :].view(grads.dtype))
            return grads.copy_(total.div_(len(gathered)))

        return future.then(decode)


@COMPRESSORS.register("randk")
class RandK(Sparse):
    def __init__(self, cfg: CommConfig, group: dist.ProcessGroup | None = None, seed: int = 0):
        super().__init__(cfg, group, seed)
        self.seeds = StepSeeds(job_stream(seed))  # the same seed on every rank: the same indices everywhere

    def pick(self, grad: torch.Tensor, piece: Piece) -> torch.Tensor:
        return torch.randperm(piece.numel, generator=self.seeds.generator_for(piece.key))[: self.k(piece.numel)].to(grad.device)

    def end_step(self) -> None:
        self.seeds.end_step()

    def exchange(self, grads, index, values):
        self.count(grads.numel() * grads.element_size(), values.numel() * values.element_size())
        future = dist.all_reduce(values, group=self.group, async_op=True).get_future()
        world = self.world

        def decode(fut: torch.futures.Future) -> torch.Tensor:
            summed = fut.value()[0]
            grads.zero_()
            grads[index] = summed.div_(world)
            return grads

        return future.then(decode)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "seeds": self.seeds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.seeds.load_state_dict(state["seeds"])

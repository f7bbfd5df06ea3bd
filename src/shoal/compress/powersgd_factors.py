"""PowerSGD whose factors travel in fp16 or bf16 (`comm.powersgd_factors`): half the bytes of torch's hook.

The algorithm is torch's (Vogels et al., 2019: error feedback, warm-started Q, one power iteration a
step) on the same `PowerSGDState` and the same per-bucket layout of P and Q, so checkpoints and the
restart code in powersgd.py do not change. Two things differ:
- what goes on the wire is cast: P, Q and the vectors sent whole. P and Q are kept, orthogonalized and
  multiplied in fp32; only the sums are rounded (P is orthogonalized after its sum, so its rounding
  becomes a slightly different basis; Q's is the approximation's own rounding, ~1e-3 relative in fp16);
- the vectors sent whole ride in P's all-reduce, so a bucket costs two collectives in turn, not three
  (each one's latency adds up in the chain of buckets).
What is summed is divided by the world size first, so fp16's range holds the sum as it holds one rank's
values, and everything sent is multiplied by a power of two (exact) that puts the largest factor near 16:
gradients of 1e-9 travel as well as gradients of 1. The powers come from numbers every rank holds alike,
so every rank picks the same: for P and the vectors, the last step's summed Q (restored by a checkpoint with
the rest of the state; on a bucket's first compressed step, the largest P over the ranks, one small
all-reduce); for Q, the longest column of this step's summed P (Q's columns are about as long). A sum that
overflows anyway (gradients ~4,000x larger than the step before) is sent again at a scale agreed then.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState, _orthogonalize

WIRE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SCALE_EXPONENT = 4  # factors travel scaled so that the largest is near 2**4


def _factors(matrices: list[torch.Tensor], memory: torch.Tensor, side: int, rank: int) -> list[torch.Tensor]:
    """Views of one flat memory as each matrix's (1, rows or columns, rank) factor."""
    views, offset = [], 0
    for matrix in matrices:
        length, r = matrix.shape[side], min(*matrix.shape, rank)
        views.append(memory[offset: offset + length * r].view(1, length, r))
        offset += length * r
    return views


def _largest(memory: torch.Tensor) -> torch.Tensor:
    return memory.abs().max() if memory.numel() else memory.new_zeros(())


def _agreed_largest(local: torch.Tensor, group, sent: Callable[[int], None]) -> torch.Tensor:
    largest = _largest(local)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=group)
    sent(largest.numel() * largest.element_size())
    return largest


def _cast(local: torch.Tensor, scale: float, world: int, wire: torch.dtype) -> torch.Tensor:
    """What one rank sends: its share of the mean, times the power of two, in the wire's dtype."""
    return (local * (scale / world)).to(wire)


def _checked(summed: torch.Tensor, local: torch.Tensor, scale: float, world: int, wire: torch.dtype, group,
             sent: Callable[[int], None]) -> torch.Tensor:
    """The mean in fp32. A sum that overflowed the wire's range (gradients that grew ~4,000x in a step) is the same
    on every rank, so every rank sends again, once, at a scale from the largest entry over the ranks (those bytes
    count in comm_bytes, through `sent`; non-finite gradients stay non-finite, as in fp32)."""
    if not torch.isfinite(summed).all():  # decided on the sum, never on `local`: every rank takes the same branch
        scale = _power_of_two(float(_agreed_largest(local, group, sent)))
        summed = _cast(local, scale, world, wire)
        dist.all_reduce(summed, group=group)
        sent(summed.numel() * summed.element_size())
    return summed.float().div_(scale)


def _power_of_two(largest: float) -> float:
    """The power of two that brings `largest` to between 8 and 16 (exact in binary floats): fp16 then keeps every
    bit of factors far below its smallest normal number (6e-5), with ~4,000x headroom under its largest (65504)."""
    if not math.isfinite(largest) or largest <= 0:
        return 1.0
    return 2.0 ** (SCALE_EXPONENT - math.ceil(math.log2(largest)))


def reduce(state: PowerSGDState, bucket: dist.GradBucket, wire: torch.dtype, matrices: list[torch.Tensor],
           whole: list[torch.Tensor], sent: Callable[[int], None]) -> torch.futures.Future[torch.Tensor]:
    """`matrices`: the bucket's gradients worth compressing, as (rows, columns) views in the order of P and Q;
    `whole`: the rest (powersgd.py decides both, by torch's rule, and counts what every step sends); `sent` is told
    the bytes of the collectives only some steps make (the largest P on a first step, a resend after an overflow)."""
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    flat, index = bucket.buffer(), bucket.index()
    if state.use_error_feedback:
        if index in state.error_dict:
            flat.add_(state.error_dict[index])
        else:
            state.error_dict[index] = torch.zeros_like(flat)
        before = flat.clone()
    rank = state.matrix_approximation_rank
    fresh = not state.warm_start or index not in state.p_memory_dict
    if fresh:
        state.p_memory_dict[index] = flat.new_empty(sum(m.shape[0] * min(*m.shape, rank) for m in matrices))
        state.q_memory_dict[index] = flat.new_empty(sum(m.shape[1] * min(*m.shape, rank) for m in matrices))
    p_memory, q_memory = state.p_memory_dict[index], state.q_memory_dict[index]
    ps, qs = _factors(matrices, p_memory, 0, rank), _factors(matrices, q_memory, 1, rank)
    if fresh:  # the same random start on every rank: the seed comes from the state's generator, which every rank shares
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(state.rng.randint(1_000_000_000))
            for q in qs:
                q.copy_(torch.randn(q.shape, dtype=q.dtype))
    previous = None if fresh else _largest(q_memory)  # last step's summed Q, before it is orthogonalized again
    for q in qs:
        _orthogonalize(q, state.orthogonalization_epsilon)
    for matrix, q, p in zip(matrices, qs, ps):
        torch.matmul(matrix, q[0], out=p[0])
    if previous is None:  # no history (first compressed step, new layout): the ranks agree on their largest P once
        previous = _agreed_largest(p_memory, group, sent)
    scale = _power_of_two(float(previous))
    local = torch.cat([t.reshape(-1) for t in whole] + [p_memory])  # fp32: a resend at another scale starts from it
    cast = _cast(local, scale, world, wire)

    def finish(fut: torch.futures.Future) -> torch.Tensor:
        summed = _checked(fut.value()[0], local, scale, world, wire, group, sent)
        offset = 0
        for t in whole:
            t.copy_(summed[offset: offset + t.numel()].view_as(t))
            offset += t.numel()
        p_memory.copy_(summed[offset:])
        longest = torch.stack([p.norm(dim=1).max() for p in ps]).max() if ps else 0.0  # Q's columns are about as long
        q_scale = _power_of_two(float(longest))
        for p in ps:
            _orthogonalize(p, state.orthogonalization_epsilon)
        for matrix, p, q in zip(matrices, ps, qs):
            torch.matmul(matrix.T, p[0], out=q[0])
        on_wire = _cast(q_memory, q_scale, world, wire)
        dist.all_reduce(on_wire, group=group)
        q_memory.copy_(_checked(on_wire, q_memory, q_scale, world, wire, group, sent))  # q_memory still holds this rank's Q
        for p, q, matrix in zip(ps, qs, matrices):
            torch.matmul(p[0], q[0].T, out=matrix)
        if state.use_error_feedback:
            state.error_dict[index] = before - flat
        if not state.warm_start:
            state.p_memory_dict.clear()
            state.q_memory_dict.clear()
        state.maybe_increase_iter(bucket)
        return flat

    return dist.all_reduce(cast, group=group, async_op=True).get_future().then(finish)

"""The compressors' math, in one process: real DDP over a gloo world of one, so each step's `p.grad` is exactly
what the compressor sent (the mean over one rank). Each test pins a property that a broken method would lose."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from given_grads import Given
from shoal.compress import COMPRESSORS, install
from shoal.compress.feedback import Piece
from shoal.compress.qsgd import CHUNK, dequantize, quantize, rows_for
from shoal.config import CommConfig, JobConfig, ParallelConfig, validate
from shoal.distributed.mesh import check_layout
from shoal.errors import ShoalError
from shoal.sync.allreduce import AllReduce
from shoal.sync.base import SyncContext


@pytest.fixture
def world_of_one():
    if dist.is_initialized():  # an earlier test's shoal.fit left its world of one: reuse it
        assert dist.get_world_size() == 1
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def compressed(method: str, *shapes, **comm):
    model = Given(*shapes)
    compressor = COMPRESSORS.get(method)(CommConfig(compression=method, **comm), None)
    compressor.attach(model)
    ddp = DistributedDataParallel(model)
    install(ddp, compressor)

    def step(grads):
        model.zero_grad()
        ddp(grads).backward()
        return [p.grad.clone() for p in model.ps]

    return step, compressor


def test_topk_error_feedback_sends_every_gradient_in_the_end(world_of_one):
    """With error feedback, sum(sent) = sum(true) - residual, and the residual stays bounded while the sums grow:
    the relative gap shrinks like (size / k) / steps. Without it, the ~5% never sent is lost for good."""
    torch.manual_seed(0)
    shapes, steps = [(20, 10), (7,)], 600
    true = [[torch.randn(s) + 0.5 for s in shapes] for _ in range(steps)]
    gaps = {}
    for feedback in (True, False):
        step, _ = compressed("topk", *shapes, topk_ratio=0.05, error_feedback=feedback)
        sent = [torch.zeros(s) for s in shapes]
        for t, grads in enumerate(true):
            for total, g in zip(sent, step(grads)):
                total += g
            if t == 99:
                early = _gap(sent, true[:100])
        gaps[feedback] = early, _gap(sent, true)
    (early, late), (_, lost) = gaps[True], gaps[False]
    assert late < 0.03 and late < early / 3, gaps  # converging: measured 0.092 after 100 steps, 0.016 after 600
    assert lost > 0.5, gaps  # what plain top-k never sends is gone (measured 0.77)


def _gap(sent, true):
    exact = [sum(g[i] for g in true) for i in range(len(sent))]
    return math.sqrt(sum(((s - e) ** 2).sum() for s, e in zip(sent, exact)) / sum((e**2).sum() for e in exact))


def test_qsgd_is_unbiased_and_really_quantizes():
    """Mean of 4000 draws within 5 standard errors of the value, entry by entry (one draw's variance per entry is at
    most (norm / s)^2 / 4); round-to-nearest with the same levels misses by far more."""
    torch.manual_seed(1)
    n, levels, draws = 700, 4, 4000  # two chunks, the second one short
    v = torch.randn(n)
    rows = rows_for([Piece(0, 0, n)])
    gen = torch.Generator().manual_seed(2)
    mean = sum(dequantize(*quantize(v, rows, torch.rand(n, generator=gen), levels, torch.int8), rows, levels) for _ in range(draws)) / draws
    norm = torch.cat([v[:CHUNK].norm().expand(CHUNK), v[CHUNK:].norm().expand(n - CHUNK)])  # each entry's chunk norm
    tolerance = 5 * norm / (2 * levels * math.sqrt(draws))
    assert ((mean - v).abs() <= tolerance).all(), ((mean - v).abs() / tolerance).max()
    one = dequantize(*quantize(v, rows, torch.rand(n, generator=gen), levels, torch.int8), rows, levels)
    assert (one - v).abs().max() > 0.1  # a single draw is coarse
    nearest = dequantize(*quantize(v, rows, torch.full((n,), 0.5), levels, torch.int8), rows, levels)
    assert ((nearest - v).abs() > tolerance).sum() > n / 2  # a biased rounding would fail the first assert


# comm.powersgd_factors -> (its wire dtype, the relative error allowed on gradients of PowerSGD's rank): fp32 rounding
# (measured <= 5e-7), fp16 (measured 4e-4) and bf16 (3.5e-3) rounding of the sums of P and Q
FACTORS = {"fp32": (torch.float32, 1e-5), "fp16": (torch.float16, 2e-3), "bf16": (torch.bfloat16, 1e-2)}


@pytest.mark.parametrize("size", [1.0, 1e-9], ids=["unit", "tiny"])  # tiny: under fp16's smallest number, unless scaled
@pytest.mark.parametrize("factors", list(FACTORS))
def test_powersgd_is_exact_on_gradients_of_its_rank(world_of_one, factors, size):
    """A layer whose inputs span 2 dimensions has rank-2 gradients (rows in that span): rank-2 PowerSGD returns them
    exactly, to the rounding of what travels (FACTORS), at any scale (16-bit factors travel scaled by a power of two);
    rank-3 gradients lose half their norm or more.
    (With a new random row space every step, torch's one warm-started power iteration is not exact: its error
    feedback amplifies the rounding, about 10x a step; real gradients' subspaces drift slowly.)"""
    torch.manual_seed(3)
    wire, within = FACTORS[factors]
    step, compressor = compressed("powersgd", (40, 30), (30,), powersgd_rank=2, powersgd_warmup=2, powersgd_factors=factors)
    inputs = torch.randn(30, 2)
    for _ in range(2):  # warm-up: plain all-reduce
        step([torch.randn(40, 30), torch.randn(30)])
    for _ in range(20):
        grads = [size * torch.randn(40, 2) @ inputs.T, size * torch.randn(30)]
        out = step(grads)
        assert (out[0] - grads[0]).norm() / grads[0].norm() < within
        # the vector travels whole, in the factors' dtype: off by its rounding at most (error feedback carries it on)
        assert (out[1] - grads[1]).abs().max() <= 2 * torch.finfo(wire).eps * grads[1].abs().max()
    jump = torch.randn(40, 2) @ inputs.T / size  # 1e9x the tiny ones: their scale would overflow fp16, so it is sent again
    compressor.stats()
    assert (step([jump, torch.randn(30)])[0] - jump).norm() / jump.norm() < within
    width = wire.itemsize
    resent = (30 + 40 * 2) * width + 4 if factors == "fp16" and size < 1 else 0  # P and the vector again, after their scale
    assert compressor.stats()["comm_bytes"] == ((40 + 30) * 2 + 30) * width + resent  # every byte sent, the resend's too
    full = torch.randn(40, 3) @ torch.randn(3, 30)
    assert (step([full, torch.randn(30)])[0] - full).norm() / full.norm() > 0.1  # measured 0.51
    assert compressor.state.iter > compressor.state.start_powerSGD_iter  # it was compressing


@pytest.mark.parametrize("factors", ["fp16", "bf16"])
def test_powersgd_with_fp16_or_bf16_factors_follows_torchs_hook(world_of_one, factors):
    """The same job's gradients (full rank, so error feedback carries real residuals from step to step) through
    torch's fp32 hook and through the cast factors, from the same seed: every step's result agrees to the
    rounding of the cast (measured over 8 steps: fp16 1.2e-3, bf16 9.8e-3 relative), so the algorithm is torch's."""
    shapes = [(40, 30), (20, 10), (30,)]  # (20, 10) at rank 4 is not worth compressing: it travels whole
    results = {}
    for name in ("fp32", factors):
        torch.manual_seed(5)
        step, _ = compressed("powersgd", *shapes, powersgd_rank=4, powersgd_warmup=2, powersgd_factors=name)
        draw = torch.Generator().manual_seed(9)
        results[name] = [step([torch.randn(s, generator=draw) for s in shapes]) for _ in range(8)]
    gap = max(((a - b).norm() / b.norm()).item() for x, y in zip(results[factors], results["fp32"]) for a, b in zip(x, y))
    assert gap < {"fp16": 4e-3, "bf16": 3e-2}[factors], gap


# (method, CommConfig keys, bytes each step sends for parameters (40, 30), (30,), (7,): 1237 entries, 4948 fp32 bytes)
HAND_COUNTS = [
    ("fp16", {}, 1237 * 2),
    ("bf16", {}, 1237 * 2),
    ("topk", {"topk_ratio": 0.05}, (60 + 2 + 1) * (4 + 4)),  # k = ceil(0.05 x size) per tensor: int32 index + fp32 value
    ("randk", {"topk_ratio": 0.05}, (60 + 2 + 1) * 4),  # values only: every rank draws the same indices
    ("qsgd", {"qsgd_levels": 127}, 1237 * 1 + (3 + 1 + 1) * 4),  # int8 levels + one fp32 norm per 512-entry chunk of a tensor
    ("qsgd", {"qsgd_levels": 200}, 1237 * 2 + (3 + 1 + 1) * 4),  # levels above 127 take int16
    ("int8", {}, 1237 + 4),  # int8 entries + one fp32 scale per bucket
    ("powersgd", {"powersgd_rank": 2, "powersgd_warmup": 2}, (40 + 30) * 2 * 4 + (30 + 7) * 4),  # P, Q of the matrix; vectors whole
    # all in fp16, and on this first compressed step the largest P over the ranks (one fp32 number, the factors' scale)
    ("powersgd", {"powersgd_rank": 2, "powersgd_warmup": 2, "powersgd_factors": "fp16"}, ((40 + 30) * 2 + 30 + 7) * 2 + 4),
    ("powersgd", {"powersgd_rank": 2, "powersgd_warmup": 2, "powersgd_factors": "bf16"}, ((40 + 30) * 2 + 30 + 7) * 2 + 4),
]


def test_powersgd_warm_up_sends_the_whole_gradient_as_fp16(world_of_one):
    shapes = [(40, 30), (30,), (7,)]
    step, compressor = compressed("powersgd", *shapes, powersgd_rank=2, powersgd_warmup=2)
    compressor.stats()
    grads = [torch.randn(s) for s in shapes]
    reduced = step(grads)
    assert compressor.stats()["comm_bytes"] == 1237 * 2  # the bucket in fp16, not torch's fp32
    for got, sent in zip(reduced, grads):
        assert torch.equal(got, sent.half().float())  # one rank: the mean is the fp16 rounding of its own gradient


@pytest.mark.parametrize("method,comm,wire", HAND_COUNTS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(HAND_COUNTS)])
def test_bytes_on_the_wire_match_a_hand_count(world_of_one, method, comm, wire):
    shapes = [(40, 30), (30,), (7,)]
    step, compressor = compressed(method, *shapes, **comm)
    for _ in range(3):  # past PowerSGD's warm-up
        compressor.stats()
        step([torch.randn(s) for s in shapes])
    stats = compressor.stats()
    assert stats["comm_bytes"] == wire
    assert stats["compression_ratio"] == pytest.approx(1237 * 4 / wire)


def test_randk_draws_the_same_indices_on_every_rank_and_new_ones_each_step():
    """Two instances stand for two ranks: the same indices at each step, whatever order the parameters come in."""
    cfg = CommConfig(compression="randk", topk_ratio=0.1)
    a, b = COMPRESSORS.get("randk")(cfg, None), COMPRESSORS.get("randk")(cfg, None)
    pieces = [Piece(0, 0, 300), Piece(1, 300, 50)]
    grad = torch.zeros(350)
    first = [a.pick(grad[p.span], p) for p in pieces]
    assert all(torch.equal(x, y) for x, y in zip(first, [b.pick(grad[p.span], p) for p in reversed(pieces)][::-1]))
    a.end_step()
    assert not torch.equal(a.pick(grad[:300], pieces[0]), first[0])
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.pick(grad[:300], pieces[0]), b.pick(grad[:300], pieces[0]))  # the state carries the stream


def test_random_draws_follow_the_jobs_seed():
    """randk's indices, QSGD's noise and PowerSGD's first matrices come from the job's `seed`: another seed
    draws otherwise, the same seed the same (so `seed =` changes the whole run, and only it)."""
    from shoal.compress import build

    cfg = CommConfig(compression="randk", topk_ratio=0.1)
    piece, grad = Piece(0, 0, 300), torch.zeros(300)
    picks = {seed: build("randk", cfg, None, seed).pick(grad, piece) for seed in (0, 1)}
    assert torch.equal(picks[0], build("randk", cfg, None, 0).pick(grad, piece))
    assert not torch.equal(picks[0], picks[1])
    qsgd = {seed: build("qsgd", CommConfig(compression="qsgd"), None, seed).seeds.generator.initial_seed() for seed in (5, 6)}
    assert qsgd[5] != qsgd[6]
    draw = lambda seed: build("powersgd", CommConfig(compression="powersgd"), None, seed).state.rng.randint(1 << 30)
    assert draw(7) == draw(7) != draw(8)


def test_comm_hook_is_the_old_name_of_comm_compression():
    assert validate({"comm": {"hook": "powersgd"}}).comm.compression == "powersgd"
    assert validate({"comm": {"hook": "fp16", "compression": "fp16"}}).comm.hook == "fp16"
    with pytest.raises(ShoalError) as err:
        validate({"comm": {"hook": "fp16", "compression": "topk"}})
    assert "'fp16'" in str(err.value) and "'topk'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["topk", "randk", "qsgd", "int8", "powersgd"])
def test_methods_that_need_ddp_buckets_are_refused_under_fsdp(method):
    dims = check_layout(ParallelConfig(fsdp=2), 2)
    ctx = SyncContext(JobConfig(comm={"compression": method}), None, dims, SimpleNamespace(group=None))
    with pytest.raises(ShoalError) as err:
        AllReduce(ctx)
    assert f"'{method}'" in str(err.value) and "fsdp=2" in str(err.value) and "\n" not in str(err.value)
    for cast in ("fp16", "bf16"):  # these become FSDP's reduce dtype
        assert AllReduce(SyncContext(JobConfig(comm={"compression": cast}), None, dims, SimpleNamespace(group=None)))


def test_fsdp_gradient_bytes_are_counted_in_the_reduce_dtype():
    """FSDP's reduce-scatter takes a rank's whole (unsharded) gradient in the reduce dtype; with dp replicas the
    shard is then all-reduced too: 1,000 + 10 parameters, fsdp 2, dp 2, bf16 -> (1,010 x 2 + 1,010) x 2 bytes."""
    from shoal.distributed.mesh import ParallelDims
    from shoal.sync.allreduce import sharded_grad_bytes

    params = [torch.nn.Parameter(torch.zeros(1000)), torch.nn.Parameter(torch.zeros(10)), torch.zeros(5)]  # the last: frozen
    sent, ratio = sharded_grad_bytes(params, ParallelDims(2, 2, 1, 1, 4), "bf16")
    assert (sent, ratio) == ((1010 * 2 + 1010) * 2, 2.0)
    assert sharded_grad_bytes(params, ParallelDims(1, 2, 1, 1, 2), "none") == (1010 * 2 * 4, 1.0)
    assert sharded_grad_bytes(params, ParallelDims(1, 1, 2, 1, 2), "none") == (0, 1.0)  # tp alone: no gradient reduction

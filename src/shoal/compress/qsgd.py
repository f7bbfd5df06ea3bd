"""QSGD (Alistarh et al., 2017): stochastic, unbiased quantization to `comm.qsgd_levels` levels (comm.compression = "qsgd").

Each parameter's gradient is cut into chunks of 512 entries (the paper's "bucket size"; the last
chunk of a parameter is shorter). A chunk v travels as its L2 norm |v| (fp32) and, per entry,
sign(v_i) x l_i, where l_i is |v_i| / |v| x s rounded down or up at random, up with probability
equal to the fraction dropped, so E[l_i] = |v_i| / |v| x s and the decoded |v| x sign x l_i / s
equals v_i in expectation (unbiased). s = comm.qsgd_levels; sign x level travels as int8 for
s <= 127, int16 above. No error feedback: the quantization is unbiased already.

Ranks quantize with their own noise and their own norms, so their payloads cannot be summed on
the wire: every rank all-gathers (levels, norms) and sums the decoded values in rank order (the
same sums, so the same update, on every rank), then divides by the world size (the mean, as
DDP's all-reduce gives).

The noise comes from a generator seeded per rank and checkpointed; it draws one seed per step and
each parameter's noise comes from that seed and the parameter's index, so neither the noise nor
the chunks depend on DDP's bucket layout: a SIGKILL restart continues bit-identical.

Bytes counted per rank and bucket (the payload it hands to the all-gather): entries x (1 or 2)
+ chunks x 4. With s = 127 that is about 3.97x less than fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from shoal.compress.base import COMPRESSORS
from shoal.compress.feedback import PerParameter, Piece, StepSeeds, job_stream
from shoal.config import CommConfig

CHUNK = 512


@dataclass(frozen=True)
class Rows:
    """A bucket's entries laid into rows of CHUNK, each parameter starting a new row (padding stays zero)."""

    real: torch.Tensor  # each bucket entry's position in the padded rows x CHUNK buffer, in bucket order
    row_of: torch.Tensor  # each bucket entry's row (chunk)
    rows: int


def rows_for(pieces: list[Piece], device: torch.device | str = "cpu") -> Rows:
    starts, row = [], 0
    for piece in pieces:
        starts.append(torch.arange(piece.numel) + row * CHUNK)
        row += -(-piece.numel // CHUNK)
    real = torch.cat(starts).to(device)
    return Rows(real, real // CHUNK, row)


def quantize(grads: torch.Tensor, rows: Rows, noise: torch.Tensor, levels: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(sign x level per entry as `dtype`, fp32 norm per chunk); `noise` is uniform in [0, 1), one per entry."""
    values = grads.float()
    padded = values.new_zeros(rows.rows * CHUNK)
    padded[rows.real] = values
    norms = padded.view(rows.rows, CHUNK).norm(dim=1)
    norm = norms[rows.row_of]
    scaled = values.abs() / norm.clamp_min(torch.finfo(torch.float32).tiny) * levels  # an all-zero chunk stays zero
    low = scaled.floor()
    level = (low + (noise < scaled - low)).clamp_max_(levels)
    return (level * values.sign()).to(dtype), norms


def dequantize(q: torch.Tensor, norms: torch.Tensor, rows: Rows, levels: int) -> torch.Tensor:
    return q.float() * norms[rows.row_of] / levels


@COMPRESSORS.register("qsgd")
class QSGD(PerParameter):
    def __init__(self, cfg: CommConfig, group: dist.ProcessGroup | None = None, seed: int = 0):
        super().__init__(cfg, group, seed)
        self.levels = cfg.qsgd_levels
        self.dtype = torch.int8 if self.levels <= 127 else torch.int16
        rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.seeds = StepSeeds(job_stream(seed) + 1 + rank)  # each rank its own noise
        self.layouts: dict[tuple[Piece, ...], Rows] = {}

    def reduce(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        grads, pieces = bucket.buffer(), self.pieces(bucket)
        rows = self.layouts.get(tuple(pieces))
        if rows is None:
            rows = self.layouts[tuple(pieces)] = rows_for(pieces, grads.device)
        noise = torch.cat([torch.rand(p.numel, generator=self.seeds.generator_for(p.key)) for p in pieces]).to(grads.device)
        if bucket.is_last():
            self.seeds.end_step()
        q, norms = quantize(grads, rows, noise, self.levels, self.dtype)
        payload = torch.cat([norms.view(torch.uint8), q.view(torch.uint8)])  # norms first: both views stay aligned
        self.count(grads.numel() * grads.element_size(), payload.numel())
        gathered = [torch.empty_like(payload) for _ in range(self.world)]
        future = dist.all_gather(gathered, payload, group=self.group, async_op=True).get_future()
        split = norms.numel() * norms.element_size()

        def decode(fut: torch.futures.Future) -> torch.Tensor:
            fut.wait()  # raises if the collective failed
            total = torch.zeros_like(grads, dtype=torch.float32)
            for part in gathered:  # rank order: the same sums on every rank
                total += dequantize(part[split:].view(self.dtype), part[:split].view(torch.float32), rows, self.levels)
            return grads.copy_(total.div_(len(gathered)))

        return future.then(decode)

    def state_dict(self) -> dict:
        return {"seeds": self.seeds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.seeds.load_state_dict(state["seeds"])

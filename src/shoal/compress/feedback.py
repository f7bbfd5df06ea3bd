"""What the sparse and quantizing compressors share: each parameter's place in a bucket, error feedback
kept per parameter, and random draws that do not depend on how DDP lays out its buckets.

DDP's first step puts parameters into buckets in model order; after it, DDP rebuilds the buckets
in the order gradients became ready (and may regroup them). A restarted run is back at the first
layout while an uninterrupted one is at the second, so anything decided per bucket offset would
put saved state against the wrong parameter, and anything drawn or chosen over a whole bucket
would be drawn differently. Everything here is therefore per parameter, keyed by the parameter's
index in `model.parameters()` (the same in every process and every attempt of a run):
residuals, the entries a method picks, and the random numbers it draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from shoal.compress.base import Compressor
from shoal.errors import ShoalError

SEED = 0x5EED  # the first generator state of every run: the same job draws the same numbers


def job_stream(seed: int) -> int:
    """The first generator state for a job's `seed` (seed 0: SEED itself)."""
    return (SEED + seed * 65537) % 2**63


@dataclass(frozen=True)
class Piece:
    """One parameter's gradient in a bucket's flat buffer."""

    key: int  # its index in model.parameters()
    offset: int
    numel: int

    @property
    def span(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


def mix(seed: int, key: int) -> int:
    """A generator seed for one parameter at one step (splitmix-style, so nearby keys give unrelated streams)."""
    z = (seed + (key + 1) * 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**63


class PerParameter(Compressor):
    """A compressor that works parameter by parameter inside each bucket (`pieces`)."""

    def __init__(self, cfg, group: dist.ProcessGroup | None = None, seed: int = 0):
        super().__init__(cfg, group, seed)
        self.keys: dict[int, int] = {}  # a parameter's storage address -> its index in the model

    def attach(self, model: nn.Module) -> None:
        self.keys = {p.data_ptr(): i for i, p in enumerate(model.parameters())}

    def pieces(self, bucket: dist.GradBucket) -> list[Piece]:
        out, offset = [], 0
        for param, grad in zip(bucket.parameters(), bucket.gradients()):
            key = self.keys.get(param.data_ptr())
            if key is None:
                raise ShoalError(f"comm.compression = '{type(self).__name__}': a bucket holds a parameter attach(model) did not see; "
                                 "call attach with the model before DDP wraps it")
            out.append(Piece(key, offset, grad.numel()))
            offset += grad.numel()
        return out


class ErrorFeedback:
    """What a step did not send, per parameter, added to that parameter's next gradient (Seide et al. 2014;
    Stich et al. 2018): over many steps everything is sent, only later."""

    def __init__(self) -> None:
        self.residuals: dict[int, torch.Tensor] = {}  # parameter index -> views into the last residual buffer of its bucket

    def add_to(self, grads: torch.Tensor, pieces: list[Piece]) -> None:
        for piece in pieces:
            residual = self.residuals.get(piece.key)
            if residual is not None:
                grads[piece.span].add_(residual.to(grads))

    def keep(self, residual: torch.Tensor, pieces: list[Piece]) -> None:
        for piece in pieces:
            self.residuals[piece.key] = residual[piece.span]

    def state_dict(self) -> dict[int, torch.Tensor]:
        return {key: value.clone() for key, value in self.residuals.items()}  # a copy: a view would save its whole bucket

    def load_state_dict(self, state: dict[int, torch.Tensor]) -> None:
        self.residuals = {int(key): value.clone() for key, value in state.items()}


class StepSeeds:
    """A seeded generator (checkpointed) draws one seed per step; each parameter's draws that step come from
    its own generator seeded from (step seed, parameter index), so they do not depend on bucket layout or order."""

    def __init__(self, seed: int = SEED):
        self.generator = torch.Generator().manual_seed(seed)
        self.current: int | None = None  # the seed of the step in progress (None between steps)

    def generator_for(self, key: int) -> torch.Generator:
        if self.current is None:
            self.current = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return torch.Generator().manual_seed(mix(self.current, key))

    def end_step(self) -> None:
        self.current = None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.current = state["current"]

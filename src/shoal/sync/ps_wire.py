"""What travels between parameter-server workers and servers, and which server owns which parameters.

The trainable parameters, flattened in `model.parameters()` order, are one vector of P floats,
cut into S near-equal contiguous ranges ("sharded by size"): server j owns [j*P//S, (j+1)*P//S).
Every message is one float32 tensor: a header of HEADER floats (read as HEADER // 2 float64
slots, so step numbers and versions stay exact) followed by one server's range of values.

  push (worker -> server):  [step, version the gradient was computed on, the worker's own gradient norm] + gradient range
  reply (server -> worker): [version, completed clocks, norm, updates applied, staleness sum, staleness max,
                             steps this worker pushed, workers connected (ps.rejoin)] + parameter range

All of it goes through torch.distributed point-to-point (isend/irecv/recv on gloo), tag TAG: on the job's groups, or
with ps.rejoin on each worker's own link (ps_link.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

HEADER = 16  # float32 slots; viewed as 8 float64
TAG = 7311  # every parameter-server message, apart from anything else on the default group


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class Shards:
    """The contiguous range of the flat parameter vector each server owns."""

    bounds: tuple[int, ...]  # S + 1 offsets into the flat vector

    @classmethod
    def of(cls, model: nn.Module, servers: int) -> Shards:
        total = sum(p.numel() for p in trainable(model))
        return cls(tuple(j * total // servers for j in range(servers + 1)))

    def range(self, j: int) -> tuple[int, int]:
        return self.bounds[j], self.bounds[j + 1]

    def size(self, j: int) -> int:
        return self.bounds[j + 1] - self.bounds[j]

    @property
    def total(self) -> int:
        return self.bounds[-1]

    def describe(self, server_ranks: list[int]) -> list[dict]:
        return [{"rank": r, "start": self.bounds[j], "end": self.bounds[j + 1]} for j, r in enumerate(server_ranks)]


def message(size: int) -> torch.Tensor:
    return torch.zeros(HEADER + size, dtype=torch.float32)


def header(buffer: torch.Tensor) -> torch.Tensor:
    """The float64 view of a message's header (writes go through to the message)."""
    return buffer[:HEADER].view(torch.float64)


def body(buffer: torch.Tensor) -> torch.Tensor:
    return buffer[HEADER:]


def flat_grad(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).to("cpu", torch.float32)
                      for p in params])


def flat_values(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float32) for p in params])


@torch.no_grad()
def write_values(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    at = 0
    for p in params:
        p.copy_(flat[at : at + p.numel()].view_as(p).to(p.device, p.dtype))
        at += p.numel()

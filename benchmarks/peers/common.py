"""What every peer shares: the equal work (work.py wrote it) and how a run is recorded. torch only.

The peers run in their own environments without Shoal, so nothing here imports it. The work file
holds Shoal's own inputs: the training and evaluation tensors, the initial weights Shoal's model
builder made, and every step's global batch as dataset indices (Shoal's batch plan); each rank
takes its contiguous half of a step's indices, as Shoal deals them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

T0 = time.time()  # the wall clock at import: the harness compares it with the launch time (start-up)


class ChannelsLastConv2d(nn.Conv2d):
    """shoal.models.cnn's convolution (computed in channels-last order, parameters as a plain Conv2d's): the same
    work, bit for bit, as the peers must do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x.contiguous(memory_format=torch.channels_last),
                                  self.weight.clone(memory_format=torch.channels_last), self.bias)


def build_cnn(channels=(16, 32), hidden: int = 128, dropout: float = 0.1) -> nn.Module:
    """The network of shoal.models.cnn (same layers, same state_dict keys), for 1x28x28 images and 10 classes."""
    c1, c2 = channels
    return nn.Sequential(
        ChannelsLastConv2d(1, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        ChannelsLastConv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 49, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10),
    )


class Work:
    """The work file, loaded (memory-mapped) in one rank."""

    def __init__(self, path: str | os.PathLike, rank: int, world: int):
        w = torch.load(path, mmap=True, weights_only=True)
        self.x, self.y, self.x_eval, self.y_eval = w["x"], w["y"], w["x_eval"], w["y_eval"]
        self.batches, self.init, self.meta = w["batches"], w["init"], json.loads(w["meta"])
        self.rank, self.world = rank, world
        self.local = self.batches.shape[1] // world
        self.steps = self.batches.shape[0]

    def model(self) -> nn.Module:
        torch.manual_seed(self.meta["seed"])
        m = build_cnn(self.meta["channels"], self.meta["hidden"], self.meta["dropout"])
        m.load_state_dict(self.init)
        return m

    def optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.meta["lr"], weight_decay=self.meta["weight_decay"])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's samples of step `step` (0-based): its contiguous slice of the global batch."""
        idx = self.batches[step, self.rank * self.local:(self.rank + 1) * self.local]
        return self.x[idx], self.y[idx]

    def tune(self) -> None:
        """The threads Shoal's worker takes (cores / local processes), and dropout seeded per rank as Shoal seeds it."""
        torch.set_num_threads(self.meta["threads"])
        torch.manual_seed(self.meta["seed"] + self.rank)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def accuracy(model: nn.Module, work: Work) -> float:
    model.eval()
    hits = sum(int((model(work.x_eval[i:i + 500]).argmax(1) == work.y_eval[i:i + 500]).sum()) for i in range(0, len(work.y_eval), 500))
    model.train()
    return hits / len(work.y_eval)


def timed_loop(work: Work, step) -> tuple[list[torch.Tensor], float, float]:
    """Every step's loss from step(x, y), which trains on this rank's batch the peer's way; wall and CPU seconds."""
    losses = []
    start, cpu0 = time.perf_counter(), time.process_time()  # cpu: this process's CPU seconds, every thread
    for i in range(work.steps):
        losses.append(step(*work.batch(i)).detach())
    return losses, time.perf_counter() - start, time.process_time() - cpu0


def plain_step(model: nn.Module, opt: torch.optim.Optimizer, backward=None):
    """The step a user of plain torch writes (the DDP loop, Ray Train; Accelerate with its own `backward`)."""
    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = loss_of(model, x, y)
        (backward or torch.Tensor.backward)(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def record(out: str | os.PathLike, work: Work, losses: list[torch.Tensor], train_s: float, model: nn.Module | None = None,
           **extra) -> None:
    """Each rank writes its per-step losses and clocks; rank 0 also evaluates and saves the model (as Shoal does at the end)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rec = {"rank": work.rank, "losses": [float(l) for l in losses], "train_s": train_s, "t_import": T0, "t_end": time.time(), **extra}
    if work.rank == 0 and model is not None:
        rec["accuracy"] = accuracy(model, work)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model.pt")
        rec["t_end"] = time.time()
    (out / f"rank-{work.rank}.json").write_text(json.dumps(rec))

"""What FSDP2 and tensor parallelism cost per layer beyond their FLOPs and bytes, measured for `shoal calibrate`.

Why: a sharded step runs longer than its FLOPs and collective bytes say: FSDP2's hooks and buffer copies
per unit, DTensor's dispatch of every sharded op (and of the optimizer's work on sharded parameters), the
latency of many small collectives. These costs do not grow with the width, and on a CPU they can double a
small model's step. So they are measured on a tiny GPT (4 layers of width 16, 8 tokens: its FLOPs and
bytes are negligible) in two processes stepping at once: plain, under fsdp = 2 and under tp = 2. What the
cost model already charges for the tiny model's collectives is taken off; the rest, per layer, is what the
planner charges each layer of a real model under that layout (`Device.fsdp_layer_s`, `tp_layer_s`).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.distributed as dist

from shoal.distributed.env import finish_together
from shoal.plan.cost import Layout, predict
from shoal.plan.hardware import Cluster, Network
from shoal.plan.shapes import ModelShape
from shoal.plan.timing import median_time

TINY = {"layers": 4, "dim": 16, "heads": 2, "seq": 8, "vocab": 64, "batch": 8}  # batch: sequences per step of the two processes
PAIR = 2  # the layouts are measured over two processes: fsdp = 2, tp = 2


def _tiny_gpt():
    from shoal.models.gpt import build_gpt

    return build_gpt(TINY["seq"], TINY["vocab"], dim=TINY["dim"], layers=TINY["layers"], heads=TINY["heads"], seed=0)


def _stepper(model, batch: int):
    """One training step (forward, backward, AdamW) on `batch` random sequences."""
    from shoal.models.gpt import lm_loss

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, TINY["vocab"], (batch, TINY["seq"] + 1), generator=g)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        lm_loss(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for _ in range(3):  # warm-up: lazy state, first collectives
        step()
    return step


def layout_steps(rank: int, port: int, threads: int, seconds: float, queue) -> None:
    """Median seconds of the tiny GPT's step, plain (each process on its half of the batch), under FSDP2 over both
    processes (each on its half) and under tensor parallelism over both (each on the whole batch)."""
    from torch.distributed.device_mesh import init_device_mesh

    from shoal.config import ParallelConfig
    from shoal.parallel import sharded, tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=PAIR)
    mesh = init_device_mesh("cpu", (PAIR,))
    half = TINY["batch"] // PAIR
    out = {"plain": median_time(_stepper(_tiny_gpt(), half), seconds),
           "fsdp": median_time(_stepper(sharded.apply(_tiny_gpt(), mesh), half), seconds),
           "tp": median_time(_stepper(tensor.apply(_tiny_gpt(), mesh, ParallelConfig(tp=PAIR)), TINY["batch"]), seconds)}
    if rank == 0:
        queue.put(out)
    finish_together()


def per_layer(steps: dict, device) -> dict:
    """Fixed seconds per layer and micro-batch of each layout: its step over the plain one, less the collectives the
    cost model charges the tiny model on `device` (a profile's, with its measured collectives), over the layers."""
    shape = ModelShape(**TINY)
    cluster = Cluster(replace(device, fsdp_layer_s=0.0, tp_layer_s=0.0), Network("none", 1.0, 0.0), 1, PAIR)
    fsdp = predict(shape, Layout(fsdp=PAIR), cluster).time["fsdp gather/scatter (exposed)"]
    tp = predict(shape, Layout(tp=PAIR), cluster).time["tensor-parallel collectives"]
    return {"fsdp_layer_s": max(steps["fsdp"] - steps["plain"] - fsdp, 0.0) / shape.layers,
            "tp_layer_s": max(steps["tp"] - steps["plain"] - tp, 0.0) / shape.layers}

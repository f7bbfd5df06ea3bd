"""The baseline: a hand-written DDP loop, as a careful user would write it without Shoal.

Run under torchrun by bench_overhead.py. Same model (Shoal's CNN builder, so the network is
identical), same data, same optimizer and the same number of steps as the Shoal run.
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from shoal.config import DataConfig
from shoal.data.datasets import load
from shoal.models.cnn import build_cnn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(os.cpu_count() // world, 1))
    train = load(DataConfig(name="mnist"), 0).train
    x_all, y_all = train.tensors
    torch.manual_seed(0)
    model = DDP(build_cnn((1, 28, 28), 10, [16, 32], dropout=0.1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=0.01)
    local = a.batch // world
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x_all), generator=g)
    steps_per_epoch = len(x_all) // a.batch
    start = time.perf_counter()
    for step in range(a.steps):
        k = step % steps_per_epoch
        if k == 0 and step:
            order = torch.randperm(len(x_all), generator=g)
        idx = order[k * a.batch + rank * local : k * a.batch + (rank + 1) * local]
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dist.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        with open(a.out, "w") as f:
            json.dump({"samples_per_s": a.steps * a.batch / elapsed, "train_s": elapsed, "loss": loss.item()}, f)
    # no destroy_process_group(): on gloo it can wait forever for a peer that already exited


if __name__ == "__main__":
    main()

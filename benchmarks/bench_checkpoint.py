"""Checkpoint costs: DCP save/load bandwidth against torch.save/torch.load of the same state, the
step-time cost of synchronous and asynchronous saves, and the time from a killed worker to training again.

One process for bandwidth and step time (the state: an MLP of ~17M parameters with its AdamW
moments, ~200 MB); the restart is a real `shoal train --nproc 2` whose rank 1 is SIGKILLed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from shoal.distributed import init_distributed

ROOT = Path(__file__).parents[1]


def big_state(width: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(4)])
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(8, width)).sum().backward()
    opt.step()  # creates the moments
    return model, opt


def gbytes(state) -> float:
    total = 0
    for v in state.values():
        if isinstance(v, dict):
            total += gbytes(v) * 1e9
        elif torch.is_tensor(v):
            total += v.numel() * v.element_size()
    return total / 1e9


def bandwidth(width: int, repeats: int, tmp: Path) -> list[str]:
    model, opt = big_state(width)
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    size = gbytes(state["model"]) + sum(gbytes(s) for s in state["optim"]["state"].values())
    times: dict[str, list[float]] = {k: [] for k in ("dcp save", "dcp load", "torch.save", "torch.load")}
    for i in range(repeats):
        d = tmp / f"dcp-{i}"
        t = time.perf_counter(); dcp.save(state, checkpoint_id=str(d)); times["dcp save"].append(time.perf_counter() - t)
        t = time.perf_counter(); dcp.load(state, checkpoint_id=str(d)); times["dcp load"].append(time.perf_counter() - t)
        f = tmp / f"torch-{i}.pt"
        t = time.perf_counter(); torch.save(state, f); times["torch.save"].append(time.perf_counter() - t)
        t = time.perf_counter(); torch.load(f, weights_only=True); times["torch.load"].append(time.perf_counter() - t)
        shutil.rmtree(d); f.unlink()
    rows = [f"state: {size:.2f} GB (model + AdamW moments), {repeats} repeats, medians", "| operation | s | GB/s |", "|---|---|---|"]
    rows += [f"| {k} | {statistics.median(v):.2f} | {size / statistics.median(v):.2f} |" for k, v in times.items()]
    return rows


def step_cost(width: int, steps: int, every: int, repeats: int, tmp: Path) -> list[str]:
    """Alternating runs after a warm-up, medians: this machine is shared and drifts."""
    from torch.utils.data import TensorDataset

    import shoal

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4096, width, generator=g), torch.randint(0, 10, (4096,), generator=g)
    modes = {"none": {"at_end": False}, "sync": {"every": every, "at_end": False},
             "async": {"every": every, "at_end": False, "async_save": True}}

    def run(mode: str, i: int) -> float:
        torch.manual_seed(0)
        layers = [m for _ in range(3) for m in (torch.nn.Linear(width, width), torch.nn.ReLU())]
        model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
        cfg = {"train": {"global_batch_size": 128, "steps": steps, "log_every": steps}, "optimizer": {"name": "adamw", "lr": 1e-4},
               "checkpoint": modes[mode]}
        t = time.perf_counter()
        shoal.fit(model, TensorDataset(x, y), None, cfg, num_classes=10, out=tmp / f"steps-{mode}-{i}", show_progress=False, summary=False)
        return time.perf_counter() - t

    run("none", -1)  # warm-up: allocator, thread pools, first-call costs
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(repeats):
        for m in modes:
            times[m].append(run(m, i))
    took = {m: statistics.median(v) for m, v in times.items()}
    rows = [f"{steps} steps of a {width}-wide 4-layer MLP (batch 128, AdamW), checkpoint every {every} steps, "
            f"median of {repeats} alternating runs", "| checkpointing | training s | vs none |", "|---|---|---|"]
    return rows + [f"| {m} | {t:.2f} | {t / took['none']:.2f}x |" for m, t in took.items()]


def restart(tmp: Path) -> list[str]:
    job = tmp / "job.toml"
    job.write_text('name = "restart"\n[model]\nname = "mlp"\n[data]\nname = "digits"\n[train]\nglobal_batch_size = 64\n'
                   'epochs = 2\nlog_every = 1\n[checkpoint]\nevery = 5\n')
    out = tmp / "restart"
    subprocess.run([sys.executable, "-m", "shoal", "train", str(job), "--nproc", "2", "--out", str(out), "--max-restarts", "1"],
                   env={**os.environ, "SHOAL_TEST_KILL": "1:17"}, check=True, capture_output=True, timeout=600)
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    i = next(i for i, r in enumerate(records) if r["kind"] == "resume")
    killed = max(r["unix_time"] for r in records[:i] if r["kind"] == "train")  # rank 1 dies right after this step
    again = next(r for r in records[i:] if r["kind"] == "train")
    return ["time from a SIGKILL of rank 1 (2 processes, one machine) to the first step after the restart",
            "| killed after step | resumed from | first step again | seconds |", "|---|---|---|---|",
            f"| 17 | {records[i]['step']} | {again['step']} | {again['unix_time'] - killed:.1f} |"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    init_distributed()
    with tempfile.TemporaryDirectory() as d:
        for block in (bandwidth(a.width, a.repeats, Path(d)), step_cost(1024, 40, 10, a.repeats, Path(d)), restart(Path(d))):
            print("\n".join(block), end="\n\n", flush=True)


if __name__ == "__main__":
    main()

"""`shoal calibrate`: measure this machine into a profile that `shoal plan --cluster FILE` reads.

What it measures: matmul FLOP/s per dtype (fp32, bf16) with this process's threads; all-reduce,
all-gather and reduce-scatter times at several message sizes between `nproc` local processes
(gloo, or NCCL with CUDA), from which latency (small messages) and bandwidth (large ones) follow
under the same alpha-beta model the planner uses; total memory. With a job file, also the share of
that peak one training step of the job's own model reaches (`achievable`; 1.0 without). What FSDP2 and tensor
parallelism add per layer beyond FLOPs and bytes, on a tiny GPT (plan/fixed_costs.py). Links between hosts: run it
on every node with `--nnodes N --node-rank R --rdzv HOST:PORT` (plan/links.py); node rank 0 writes the profile, whose
[network] is then the slowest measured pair. A profile of one machine says `network = intra`.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shoal.distributed.env import finish_together
from shoal.errors import ShoalError
from shoal.monitor.flops import measured_peak_flops
from shoal.plan.fixed_costs import PAIR, layout_steps, per_layer
from shoal.plan.hardware import Device, Network, profile_toml
from shoal.plan.links import measure_links, slowest
from shoal.plan.timing import median_time

SIZES = (4096, 1 << 20, 16 << 20)  # bytes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, world: int, port: int, seconds: float, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = {}
    for size in SIZES:
        n = size // 4
        buf, chunk = torch.ones(n), torch.ones(n // world)
        gathered = torch.empty(chunk.numel() * world)
        out[size] = {"all_reduce": median_time(lambda b=buf: dist.all_reduce(b), seconds),
                     "all_gather": median_time(lambda g=gathered, c=chunk: dist.all_gather_single(g, c), seconds),
                     "reduce_scatter": median_time(lambda c=chunk, b=buf: dist.reduce_scatter_single(c, b), seconds)}
    if rank == 0:
        queue.put(out)
    finish_together()


def _in_processes(target, args: list[tuple], what: str, timeout_s: float, results: int = 0) -> list:
    """target(*args[i], queue) in one spawned process each, all at once; the `results` items (default: one per process)
    they put on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, queue)) for a in args]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=timeout_s)
    if any(proc.exitcode != 0 for proc in procs):
        raise ShoalError(f"calibrate: {what} failed in {len(procs)} processes (exit codes {[p.exitcode for p in procs]})")
    return [queue.get(timeout=10) for _ in range(results or len(procs))]


def measure_collectives(nproc: int, seconds: float) -> dict:
    port = _free_port()
    return _in_processes(_collectives, [(r, nproc, port, seconds) for r in range(nproc)], "measuring collectives", 300, results=1)[0]


def measure_layout_steps(threads: int, seconds: float) -> dict:
    """The tiny GPT's step plain, under fsdp = 2 and under tp = 2 (plan/fixed_costs.py), in two processes."""
    port = _free_port()
    return _in_processes(layout_steps, [(r, port, threads, seconds) for r in range(PAIR)], "timing a tiny GPT's layouts", 300, results=1)[0]


def fit_link(times: dict, nproc: int) -> tuple[float, float]:
    """(bytes/s, latency) of the ring model 2(n-1)/n * S / bw + 2(n-1) * alpha through the smallest and largest all-reduce."""
    small, large = min(times), max(times)
    hops = 2 * (nproc - 1)
    share = 2 * (nproc - 1) / nproc
    t_small, t_large = times[small]["all_reduce"], times[large]["all_reduce"]
    bw = share * (large - small) / max(t_large - t_small, 1e-9)
    latency = max(t_small - share * small / bw, 0.0) / hops
    return bw, latency


def _job_step(job: Path, nproc: int, threads: int, seconds: float, start, queue) -> None:
    """One process's (FLOPs, median seconds) of the job's training step (its optimizer, its clipping) on its share of the
    batch, timed while the other processes time theirs (`start`: a barrier), as training runs them: side by side."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from shoal.config import load_job
    from shoal.data import fetch
    from shoal.data import load as load_data
    from shoal.models import build_model
    from shoal.models.gpt import lm_loss
    from shoal.train.optim import build_optimizer

    torch.set_num_threads(threads)
    cfg = load_job(job)
    splits = load_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed)
    loss_fn = lm_loss if splits.spec.task == "lm" else F.cross_entropy
    size = max(cfg.train.global_batch_size // nproc, 1)
    inputs, targets = fetch(splits.train, torch.arange(min(size, len(splits.train))).numpy())[:2]
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)  # the job's own: AdamW's update is part of the step

    def step() -> None:
        loss_fn(model(inputs), targets, reduction="sum").backward()
        if cfg.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with FlopCounterMode(display=False) as counter:
        step()
    start.wait()
    times, began = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - began < seconds:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    queue.put((counter.get_total_flops(), sorted(times)[len(times) // 2]))


def model_efficiency(job: Path, nproc: int, threads: int, peak: float, seconds: float) -> dict:
    """The share of the matmul peak one training step of the job's own model reaches (forward, backward, optimizer) on
    one process's share of the batch, with all `nproc` processes stepping at once (alone, one runs faster than it
    will in training: they share memory bandwidth and caches): what `achievable` should be for that model here.
    The slowest process counts: training goes at its pace."""
    start = mp.get_context("spawn").Barrier(nproc)
    results = _in_processes(_job_step, [(job, nproc, threads, seconds, start)] * nproc, f"timing {job}'s step", 600)
    flops = results[0][0]
    step_s = max(t for _, t in results)
    return {"job": str(job), "job_step_s": step_s, "job_flops_per_step": flops, "job_achievable": flops / step_s / peak,
            "job_processes": nproc}


def calibrate(out: Path, nproc: int = 2, seconds: float = 0.3, job: Path | None = None, nnodes: int = 1, node_rank: int = 0,
              rdzv: str = "") -> Path | None:
    """Writes the profile on node rank 0 (returns its path); other nodes only take part in the link measurement."""
    if nproc < 2:
        raise ShoalError("calibrate --nproc: at least 2 processes are needed to measure collectives")
    if out.is_dir():
        raise ShoalError(f"calibrate --out: '{out}' is a directory; give a file name such as {out / 'cluster.toml'}")
    links = measure_links(nnodes, node_rank, rdzv) if nnodes > 1 or rdzv else {}
    if node_rank != 0:
        return None
    threads = max(1, (os.cpu_count() or 1) // nproc)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # what each of nproc training processes gets
    try:
        fp32 = measured_peak_flops("cpu", torch.float32, 1024, seconds)
        bf16 = measured_peak_flops("cpu", torch.bfloat16, 256, seconds)
    finally:
        torch.set_num_threads(before)
    times = measure_collectives(nproc, seconds)
    bw, latency = fit_link(times, nproc)
    fit = model_efficiency(job, nproc, threads, fp32, seconds) if job is not None else {}
    tables = {f"{kind}_s": tuple(times[s][kind] for s in times) for kind in ("all_reduce", "all_gather", "reduce_scatter")}
    device = Device(f"{socket.gethostname()} CPU process ({threads} threads)", fp32, psutil.virtual_memory().total / nproc, bw, latency,
                    achievable=min(fit.get("job_achievable", 1.0), 1.0), flash_attention=False, dtype_bytes=4,
                    overlaps_comm=False,  # gloo's collectives run on the cores the compute uses
                    measured_group=nproc, message_bytes=tuple(times), **tables)  # gloo's all-gather and reduce-scatter are no rings
    steps = measure_layout_steps(threads, seconds)
    device = replace(device, **per_layer(steps, device))
    network = slowest(links, nnodes) if links else Network("intra (one machine: not measured)", bw, latency, 1.0)
    measured = {**fit, "nproc": nproc, "threads": threads, "fp32_flops": fp32, "bf16_flops": bf16,
                **{f"tiny_gpt_{k}_step_s": v for k, v in steps.items()}}
    if links:
        measured.update(link_pairs=list(links), link_bw=[v["bw"] for v in links.values()],
                        link_latency_s=[v["latency_s"] for v in links.values()])
    text = profile_toml(device, network, measured)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out

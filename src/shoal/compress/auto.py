"""comm.compression = "auto": measure this job's link and compute at start, predict each method's step time,
and pick the method the numbers favour; the choice, what was measured and why go into metrics.jsonl.

Measured once, before DDP wraps the replica (the fastest of a few calls on each rank, then the
largest over the ranks, so every rank makes the same choice): one forward and backward of a training micro-batch (compute), fp32 all-reduces of
the gradients' size and of an eighth of it (their difference is what the bytes cost, the rest is
latency), an all-gather of a quarter of it, and one elementwise pass over the gradients (what
encoding costs per pass). Predicted step time of a
method = compute + latency x its collectives + its bytes / the measured rate of its collective
+ its passes x the pass time; no overlap is assumed. The least lossy candidate within 10% of the
fastest wins, and "none" whenever compression would save less than 10% of the step (a fast link) or the
gradients' bytes cost no more than the all-reduce's latency (latency-bound: fewer bytes buy nothing).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

from shoal.config import CommConfig
from shoal.distributed.collectives import TrainingGroup
from shoal.timing import fastest

# The candidates, least lossy first: the order of their measured final accuracy on the MNIST link benchmark (none
# 0.987, fp16 0.986, int8 0.9855, qsgd 0.9855, powersgd rank 4 0.986) and on digits (docs/compression.md). topk and
# randk are predicted (and logged) but never chosen: at 1% they cost accuracy and steps (MNIST: topk 0.9715 and
# ~1.5x the time to 97%, randk 0.83), which a step-time prediction cannot see; a job asks for them by name.
LEAST_LOSSY_FIRST = ("none", "fp16", "int8", "qsgd", "powersgd")
GAIN = 1.10  # a method must beat the next-less-lossy choice by 10% of the step to be worth its noise


def _compute_s(model: nn.Module, sample: torch.Tensor, accum: int) -> float:
    """Forward and backward of one micro-batch, leaving no trace: RNG, buffers (batch-norm statistics), gradients."""
    buffers = [(b, b.clone()) for b in model.buffers()]  # parameters only get gradients; buffers may be updated in place
    with torch.random.fork_rng(devices=[]):
        seconds = fastest(lambda: model(sample).float().square().mean().backward(), repeats=3)
    with torch.no_grad():
        for live, saved in buffers:
            live.copy_(saved)
    for p in model.parameters():
        p.grad = None
    return seconds * accum


def measure(model: nn.Module, sample: torch.Tensor, accum: int, group: TrainingGroup) -> dict[str, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in params)
    grads = torch.zeros(numel, dtype=torch.float32, device=params[0].device)
    quarter = torch.zeros(max(numel, 1), dtype=torch.int8, device=grads.device)
    gathered = [torch.empty_like(quarter) for _ in range(group.size)]
    eighth = grads[: max(numel // 8, 1)].clone()
    found = {
        "compute_s": _compute_s(model, sample, accum),
        "allreduce_s": fastest(lambda: dist.all_reduce(grads, group=group.group)),
        "allreduce_eighth_s": fastest(lambda: dist.all_reduce(eighth, group=group.group)),
        "allgather_s": fastest(lambda: dist.all_gather(gathered, quarter, group=group.group)),
        "pass_s": fastest(lambda: grads.mul(1.0001)),
    }
    worst = dict(zip(found, map(float, group.max(list(found.values())))))  # the slowest rank sets the pace; every rank agrees
    # two sizes of the same all-reduce: time = latency + bytes / rate (a size-1 tensor takes another algorithm in gloo)
    bytes_s = max(worst["allreduce_s"] - worst["allreduce_eighth_s"], 0.0) * 8 / 7
    latency = max(worst["allreduce_s"] - bytes_s, 0.0)
    return {**worst, "bytes_s": bytes_s, "latency_s": latency, "grad_bytes": 4 * numel, "world": group.size}


def _powersgd_fraction(model: nn.Module, rank: int) -> float:
    sent = whole = 0
    for p in model.parameters():
        n = p.shape[0] if p.dim() else 1
        m = p.numel() // max(n, 1)
        r = min(n, m, rank)
        worth, full, compressed = powerSGD_hook._should_compress(n, m, r, 2)
        sent, whole = sent + (compressed if worth else full), whole + full
    return sent / max(whole, 1)


def predict(found: dict[str, float], model: nn.Module, cfg: CommConfig) -> dict[str, float]:
    """Predicted step seconds per method: (fraction of fp32 bytes, collective, collectives, encoding passes)."""
    lat, g = found["latency_s"], found["grad_bytes"]
    ar_rate = g / max(found["bytes_s"], 1e-9)  # fp32 payload bytes per second through an all-reduce
    ag_rate = (g / 4) / max(found["allgather_s"] - lat, 1e-9)  # payload bytes per second through an all-gather
    qsgd_bytes = (1 if cfg.qsgd_levels <= 127 else 2) / 4 + 1 / 512
    methods = {
        "none": (1.0, ar_rate, 1, 0),
        "fp16": (0.5, ar_rate, 1, 2),
        "int8": (0.25, ag_rate, 1, 4),
        "powersgd": (_powersgd_fraction(model, cfg.powersgd_rank) * (1 if cfg.powersgd_factors == "fp32" else 0.5), ar_rate,
                     3 if cfg.powersgd_factors == "fp32" else 2, 6),  # cast factors: half the bytes, the vectors ride with P
        "qsgd": (qsgd_bytes, ag_rate, 1, 10),
        "randk": (cfg.topk_ratio, ar_rate, 1, 3),
        "topk": (2 * cfg.topk_ratio, ag_rate, 1, 3 + math.log2(max(g / 4, 2))),  # selecting the largest costs ~log passes
    }
    return {m: found["compute_s"] + lat * calls + fraction * g / rate + passes * found["pass_s"]
            for m, (fraction, rate, calls, passes) in methods.items()}


def choose(predicted: dict[str, float], found: dict[str, float]) -> tuple[str, str]:
    """(method, why): none when the gradients' bytes cost under 10% of the step (compression saves bytes, not
    latency); else walk from the least lossy candidate up, moving on only for a gain of more than 10% of the step."""
    bytes_s = found["bytes_s"]
    if bytes_s <= max((GAIN - 1) * predicted["none"], found["latency_s"]):  # also latency-bound: fewer bytes buy nothing
        return "none", (f"the gradients' {found['grad_bytes'] / 2**20:.2f} MB cost {max(bytes_s, 0) * 1e3:.2f} ms beyond the link's "
                        f"latency in a {predicted['none'] * 1e3:.1f} ms step: compression would save under {GAIN - 1:.0%} (a fast link)")
    fastest = min(predicted[m] for m in LEAST_LOSSY_FIRST)
    for method in LEAST_LOSSY_FIRST:
        if predicted[method] <= GAIN * fastest:
            break
    speedup = predicted["none"] / predicted[method]
    if method == "none":
        return method, f"compression would save under {GAIN - 1:.0%} of a {predicted['none'] * 1e3:.1f} ms step (a fast link)"
    return method, (f"predicted {predicted[method] * 1e3:.1f} ms a step against {predicted['none'] * 1e3:.1f} ms uncompressed "
                    f"({speedup:.2f}x); the least lossy method within {GAIN - 1:.0%} of the fastest")

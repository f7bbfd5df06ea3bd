"""What the multi-process compression tests run inside spawned workers (spawn pickles these by name)."""

from __future__ import annotations

import dp_workers
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from given_grads import Given
from shoal.compress import COMPRESSORS, install
from shoal.config import CommConfig
from shoal.distributed.env import init_distributed

# The digits MLP of the data-parallel tests (3 epochs, 69 SGD steps of 64 samples, momentum 0.9), once per
# method, evaluated on all 360 held-out images.
METHODS = {
    "none": {},
    "fp16": {},
    "bf16": {},
    "topk": {"topk_ratio": 0.1},
    "randk": {"topk_ratio": 0.1},
    "qsgd": {"qsgd_levels": 127},
    "int8": {},
    "powersgd": {"powersgd_rank": 2, "powersgd_warmup": 2},
}
DATA = {"limit_train": 0, "limit_eval": 0}
CASES = {name: {**dp_workers.LONGER, "data": DATA, "comm": {"compression": name, **keys}} for name, keys in METHODS.items()}
CASES["powersgd_fp16"] = {**dp_workers.LONGER, "data": DATA, "comm": {"compression": "powersgd", **METHODS["powersgd"], "powersgd_factors": "fp16"}}
CASES |= {f"fsdp_{name}": {**dp_workers.LONGER, "data": DATA, "parallel": {"fsdp": 2}, "comm": {"compression": name}}
          for name in ("none", "fp16", "bf16")}


def train(names: list[str]) -> dict:
    """{name: {"params": whole tensors (FSDP shards gathered), "eval": metrics}} per case, then "means" (below)."""
    out = {"means": means()}
    for name in names:
        result = dp_workers.train_case(CASES[name])
        full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in result["params"].items()}  # collective under FSDP
        out[name] = {**result, "params": full}
    return out


def means() -> dict[str, float]:
    """Per method, the largest gap between what DDP hands back and the mean over ranks of what each rank sent,
    with every rank's gradient different (so a sum, a rank's own value or mismatched indices would show)."""
    init_distributed("gloo")
    shapes, rank, world = [(40, 30), (30,), (7,)], dist.get_rank(), dist.get_world_size()
    out = {}
    for method, comm in {"topk": {"topk_ratio": 0.05}, "randk": {"topk_ratio": 0.05}, "qsgd": {}, "int8": {}}.items():
        model = Given(*shapes)
        compressor = COMPRESSORS.get(method)(CommConfig(compression=method, error_feedback=False, **comm), None)
        compressor.attach(model)
        ddp = DistributedDataParallel(model)
        install(ddp, compressor)
        worst = 0.0
        for step in range(3):
            grads = [torch.randn(s, generator=torch.Generator().manual_seed(100 * step + r)) for r in range(world) for s in shapes]
            mine = grads[rank * len(shapes):(rank + 1) * len(shapes)]
            model.zero_grad()
            ddp(mine).backward()
            got = torch.cat([p.grad.flatten() for p in model.ps])
            each = [torch.cat([g.flatten() for g in grads[r * len(shapes):(r + 1) * len(shapes)]]) for r in range(world)]
            worst = max(worst, (got - sum(sent(method, compressor, e, got) for e in each) / world).abs().max().item())
            if method == "randk":
                out["randk_entries"] = int((got != 0).sum())
        out[method] = worst
    for factors in ("fp32", "fp16"):
        out[f"powersgd_{factors}"], out[f"powersgd_{factors}_buckets"] = powersgd_in_buckets(rank, world, factors)
    return out


def powersgd_in_buckets(rank: int, world: int, factors: str) -> tuple[float, int]:
    """PowerSGD (rank 2) with every matrix in a bucket of its own: each rank's gradients differ but share a row space
    of 2 dimensions (a layer whose inputs span 2), so their mean has rank 2 and, after the warm-up, comes back exact
    to fp32 rounding (as on one process, tests/unit/test_compression.py). Several buckets are in flight during one
    backward, each issuing a further all-reduce from a callback: issued out of order they would pair wrong tensors.
    With fp16 factors the mean comes back to fp16 rounding of the sums of P and Q."""
    shapes = [(40, 30), (30, 20), (50, 10), (24, 16)]
    model = Given(*shapes)
    comm = CommConfig(compression="powersgd", powersgd_rank=2, powersgd_warmup=2, powersgd_factors=factors)
    compressor = COMPRESSORS.get("powersgd")(comm, None)
    compressor.attach(model)
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.001)  # 1 KB: every matrix a bucket of its own (after DDP's rebuild)
    install(ddp, compressor)
    rows = [torch.randn(m, 2, generator=torch.Generator().manual_seed(m)) for _, m in shapes]  # the same on every rank
    worst = 0.0
    for step in range(12):
        each = [[torch.randn(n, 2, generator=torch.Generator().manual_seed(1000 * step + 100 * r + n)) @ v.T
                 for (n, _), v in zip(shapes, rows)] for r in range(world)]
        model.zero_grad()
        ddp(each[rank]).backward()
        if step >= 2:  # after the fp16 warm-up
            for i, p in enumerate(model.ps):
                mean = sum(e[i] for e in each) / world
                worst = max(worst, ((p.grad - mean).norm() / mean.norm()).item())
    return worst, len(compressor.state.p_memory_dict)


def sent(method: str, compressor, g: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """What one rank's gradient g contributes, decoded, as the method defines it (computed here from scratch)."""
    if method == "topk":
        keep = torch.zeros_like(g)
        offset = 0
        for n in (1200, 30, 7):
            idx = g[offset:offset + n].abs().topk(compressor.k(n)).indices + offset
            keep[idx] = g[idx]
            offset += n
        return keep
    if method == "randk":
        return torch.where(got != 0, g, 0.0)  # the entries that came back must be the same for every rank
    return g  # qsgd, int8: lossy but close; the test bounds the gap

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
    return out


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

"""Model FLOPs utilization: the FLOPs a step needs, per second of step, against this device's measured peak.

Why measured: a datasheet peak means nothing on a CPU that shares its cores, and MFU is only
useful against what the device can really do. `measured_peak_flops` times a square matmul in
the training dtype (a few tenths of a second, once per process). The model's FLOPs come from
torch's FlopCounterMode over one real step (step 2: the first has one-off costs): the matmuls,
convolutions and attention of forward and backward on this rank's batch, nothing approximated.
Under tensor parallelism the counter sees the whole layer, so the count is divided by `tp`.

Fields: `model_flops_per_step` (this rank), `peak_tflops` (this rank's device),
`mfu` (mean over ranks of flops / median step time / peak) and `mfu_per_rank`.
"""

from __future__ import annotations

import functools
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from shoal.monitor.base import MONITORS, Monitor, MonitorContext
from shoal.monitor.system import StepGaps

COUNTED_STEP = 2


def measured_peak_flops(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, size: int = 0,
                        seconds: float = 0.25) -> float:
    """FLOP/s of repeated `size x size` matmuls (0: 1024 on CPU, 8192 on an accelerator), best of a few timed runs."""
    device = torch.device(device)
    size = size or (1024 if device.type == "cpu" else 8192)
    g = torch.Generator(device).manual_seed(0)  # its own stream: measuring must not move the job's RNG (dropout masks)
    a, b = (torch.randn(size, size, device=device, dtype=dtype, generator=g) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: allocation, kernel selection
    sync()
    best, spent, reps = 0.0, 0.0, 1
    while spent < seconds:
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        took = time.perf_counter() - t0
        spent += took
        best = max(best, 2 * size**3 * reps / took)
        reps = min(reps * 2, 64)
    return best


@functools.cache
def _peak_of(device: torch.device, dtype: torch.dtype) -> float:
    """The device's measured peak, once per process (every fit of a process that trains several models reuses it)."""
    return measured_peak_flops(device, dtype)


def _tp_size(layout) -> int:
    dims = getattr(layout, "dims", None)
    return int(getattr(dims, "tp", 1) or 1)


@MONITORS.register("mfu")
class ModelFlops(Monitor):
    def __init__(self, ctx: MonitorContext):
        super().__init__(ctx)
        params = list(ctx.layout.parameters())
        sample = params[0] if params else torch.zeros(1)
        local = sample.to_local() if hasattr(sample, "to_local") else sample
        self.peak = _peak_of(local.device, torch.float32 if not local.is_floating_point() else local.dtype)
        self.flops: float | None = None
        self.counter: FlopCounterMode | None = None
        self.step = 0
        self.gaps = StepGaps()
        self.hooks = [m.register_forward_pre_hook(self._before_forward) for m in ctx.layout.modules]

    def _before_forward(self, module, _args) -> None:
        if (module.training and self.counter is None and self.flops is None and self.step + 1 >= COUNTED_STEP
                and not self.ctx.layout.building):  # a step that builds (a new pipeline schedule): a later one
            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()

    def after_step(self, step: int) -> None:
        self.step = step
        self.gaps.tick()
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops() / _tp_size(self.ctx.layout)
            self.counter = None
            for hook in self.hooks:
                hook.remove()

    def record(self) -> dict:
        step_s = self.gaps.take()
        flops = self.flops or 0.0
        mine = flops / step_s / self.peak if step_s > 0 and self.peak > 0 else 0.0
        every = self.ctx.group.gather([mine, flops, self.peak])
        if not flops and not every[:, 1].any():
            return {"peak_tflops": round(self.peak / 1e12, 4)}
        per_rank = [float(f"{v:.4g}") for v in every[:, 0]]
        return {"mfu": float(f"{sum(per_rank) / len(per_rank):.4g}"), "mfu_per_rank": per_rank,
                "model_flops_per_step": flops, "peak_tflops": float(f"{self.peak / 1e12:.4g}")}

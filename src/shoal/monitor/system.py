"""CPU, resident memory, network bytes and step time of every rank, from psutil.

Why per rank: a rank that computes less (CPU well under the others') or waits more (longer
steps) is the one that holds the job back; the report marks it. Figures cover the log window
since the previous record:
- `cpu_percent`: this process's CPU use (100 = one core busy the whole window);
- `rss_mb`: resident memory now;
- `net_sent_mb`, `net_recv_mb`: bytes the machine's interfaces (loopback included) moved in the
  window. psutil counts per machine, not per process: ranks on one machine see the same traffic;
- `rank_step_s`: this rank's time per step (from one step's end to the next, evaluation and
  checkpoint pauses left out by taking the median): the same on every rank of a synchronous job;
- `rank_busy_s`: this rank's CPU seconds per step: the straggler is the rank busy longest, the
  others wait for it inside the collectives.
With CUDA also `gpu_util_percent` (NVML through torch.cuda.utilization, when the nvidia-ml-py
package is there) and `gpu_mem_mb` (peak memory torch allocated in the window).
Records carry the largest value over ranks and every rank's list (`*_per_rank`).
"""

from __future__ import annotations

import time

import numpy as np
import psutil
import torch

from shoal.monitor.base import MONITORS, Monitor, MonitorContext

FIELDS = ("cpu_percent", "rss_mb", "net_sent_mb", "net_recv_mb", "rank_step_s", "rank_busy_s")
GPU_FIELDS = ("gpu_util_percent", "gpu_mem_mb")


def gpu_figures(device: torch.device) -> list[float] | None:
    """[utilization %, peak MB allocated since the last call] of a CUDA device; None elsewhere. -1: NVML not available."""
    if device.type != "cuda":
        return None
    try:
        util = float(torch.cuda.utilization(device))
    except Exception:  # no NVML bindings (nvidia-ml-py) or no permission: say so with -1 rather than stop the run
        util = -1.0
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    torch.cuda.reset_peak_memory_stats(device)
    return [util, peak]


class StepGaps:
    """Seconds between consecutive `tick()`s; the median of a window leaves out its pauses (evaluation, checkpoints)."""

    def __init__(self):
        self.last: float | None = None
        self.gaps: list[float] = []

    def tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now

    def take(self) -> float:
        """The window's median gap (0.0 before two ticks); starts a new window."""
        median = float(np.median(self.gaps)) if self.gaps else 0.0
        self.gaps = []
        return median


@MONITORS.register("system")
class System(Monitor):
    def __init__(self, ctx: MonitorContext):
        super().__init__(ctx)
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call starts psutil's interval
        self.net = psutil.net_io_counters()
        self.gaps = StepGaps()
        self.cpu_s, self.steps = time.process_time(), 0
        params = list(ctx.layout.parameters())
        self.device = params[0].device if params else torch.device("cpu")

    def after_step(self, step: int) -> None:
        self.gaps.tick()
        self.steps += 1

    def record(self) -> dict:
        net = psutil.net_io_counters()
        sent, recv = (net.bytes_sent - self.net.bytes_sent) / 2**20, (net.bytes_recv - self.net.bytes_recv) / 2**20
        self.net = net
        cpu_s = time.process_time()
        busy = (cpu_s - self.cpu_s) / max(self.steps, 1)
        self.cpu_s, self.steps = cpu_s, 0
        mine = [self.process.cpu_percent(None), self.process.memory_info().rss / 2**20, sent, recv, self.gaps.take(), busy]
        gpu = gpu_figures(self.device)
        fields = FIELDS + (GPU_FIELDS if gpu is not None else ())
        every = self.ctx.group.gather(mine + (gpu or []))
        out: dict = {}
        for i, name in enumerate(fields):
            column = [float(f"{v:.4g}") for v in every[:, i]]
            out[name], out[f"{name}_per_rank"] = max(column), column
        return out

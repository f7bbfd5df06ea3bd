"""Enumerate layouts, predict each, drop those that do not fit memory, recommend the fastest, and say why.

The layouts: every tp that divides the node and the heads, every pp that divides the layers,
every split of the rest into dp x fsdp, micro-batch counts (pipeline micro-batches, or
accumulation steps without a pipeline), 1F1B and interleaved schedules, with and without
activation recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.errors import ShoalError
from shoal.plan.cost import HEADROOM, Layout, Prediction, Sync, predict
from shoal.plan.hardware import Cluster
from shoal.plan.shapes import ModelShape

GB = 1e9


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def microbatch_counts(seqs: int, pp: int, most: int = 6) -> list[int]:
    """Micro-batch counts that divide a replica's sequences: powers of two from 1 (or from pp with a pipeline)."""
    counts, m = [], max(pp, 1)
    while m <= seqs and len(counts) < most:
        if seqs % m == 0:
            counts.append(m)
        m *= 2
    return counts or ([seqs] if seqs >= pp else [])


def layouts(shape: ModelShape, cluster: Cluster, recompute: tuple[bool, ...] = (False, True)) -> list[Layout]:
    out = []
    kv = shape.kv_heads or shape.heads
    for tp in divisors(cluster.per_node):
        if shape.heads % tp or kv % tp or cluster.world % tp:
            continue
        for pp in divisors(cluster.world // tp):
            if shape.layers % pp:
                continue
            rest = cluster.world // (tp * pp)
            if shape.batch % rest:
                continue
            for fsdp in divisors(rest):
                for m in microbatch_counts(shape.batch // rest, pp):
                    schedules = [("1f1b", 1)] + ([("interleaved", 2)] if pp > 1 and shape.layers % (2 * pp) == 0 and m % pp == 0 else [])
                    for schedule, v in schedules if pp > 1 else [("1f1b", 1)]:
                        out += [Layout(rest // fsdp, fsdp, tp, pp, m, schedule, v, r) for r in recompute]
    return out


@dataclass
class Plan:
    shape: ModelShape
    cluster: Cluster
    predictions: list[Prediction]  # every layout, fastest first (equal times: fewer micro-batches, no recompute, less memory)
    best: Prediction
    reasons: list[str]

    @property
    def fitting(self) -> list[Prediction]:
        return [p for p in self.predictions if p.fits]


def make_plan(shape: ModelShape, cluster: Cluster, optimizer: str = "adamw", sync: Sync = Sync()) -> Plan:
    candidates = layouts(shape, cluster)
    if not candidates:
        raise ShoalError(f"plan: no layout of {cluster.world} devices divides this model (layers {shape.layers}, heads {shape.heads}) "
                         f"and batch {shape.batch}; make the global batch a multiple of the device count")
    predictions = sorted((predict(shape, layout, cluster, optimizer, sync) for layout in candidates),
                         key=lambda p: (float(f"{p.step_s:.4g}"), p.layout.microbatches, p.layout.recompute, p.memory_bytes))
    fitting = [p for p in predictions if p.fits]
    memory = cluster.device.memory_bytes
    if not fitting:
        least = min(predictions, key=lambda p: p.memory_bytes)
        raise ShoalError(f"plan: no layout fits in {memory / GB:.0f} GB per device: the smallest, {least.layout.describe()}, needs "
                         f"{least.memory_bytes / GB:.1f} GB; use more devices, a smaller model or a smaller batch")
    return Plan(shape, cluster, predictions, fitting[0], reasons(fitting, predictions, memory))


def _share(parts: dict[str, float], total: float) -> str:
    top = sorted(((v, k) for k, v in parts.items() if v > 0), reverse=True)[:3]
    return ", ".join(f"{k} {v / total:.0%}" for v, k in top)


def reasons(fitting: list[Prediction], every: list[Prediction], memory: float) -> list[str]:
    best = fitting[0]
    out = [f"fastest of the {len(fitting)} layouts that fit ({len(every)} considered, {len(every) - len(fitting)} dropped: "
           f"more than {HEADROOM:.0%} of {memory / GB:.0f} GB per device)",
           f"predicted step {best.step_s:.4g} s, {best.tokens_per_s:,.0f} tokens/s, MFU {best.mfu:.1%}; time: {_share(best.time, best.step_s)}",
           f"memory {best.memory_bytes / GB:.1f} GB of {memory / GB:.0f} GB: {_share(best.memory, best.memory_bytes)}"]
    if len(fitting) > 1:
        nxt = fitting[1]
        out.append(f"next best {nxt.layout.describe()}: {nxt.step_s / best.step_s - 1:+.1%} step time")
    plain = [p for p in every if p.layout.tp == p.layout.pp == p.layout.fsdp == 1 and not p.layout.recompute]
    if plain and not any(p.fits for p in plain):
        least = min(plain, key=lambda p: p.memory_bytes)
        out.append(f"plain data parallel does not fit: {least.memory_bytes / GB:.1f} GB per device")
    elif plain and best.layout not in [p.layout for p in plain]:
        fastest = min((p for p in plain if p.fits), key=lambda p: p.step_s)
        out.append(f"plain data parallel fits but is {fastest.step_s / best.step_s - 1:+.1%} slower")
    return out

"""The cost model: step time and memory per device of one layout of one model on one cluster.

Why an explicit, small model: every number in a plan can be traced to a formula a test checks by
hand. Collectives are ring collectives under the alpha-beta model (latency per hop plus bytes over
the slowest link of the group); element-wise ops take the bytes they move over the memory's
bandwidth (shapes.py); FSDP and tensor parallelism add a fixed cost per layer where a profile measured one
(plan/fixed_costs.py: recomputation repeats tp's forward share, a third); groups are laid out tp innermost (inside a node first), then fsdp,
then dp, then pp, so a group uses NVLink when it fits in a node and the network otherwise.
DDP and FSDP overlap their collectives with compute: what is exposed is what the compute window
does not cover, and at least the last bucket (a tenth of it). On a device that does not overlap (CPU,
where gloo's collectives take the cores the compute needs) all of it is exposed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shoal.plan.hardware import Cluster
from shoal.plan.shapes import ModelShape

HEADROOM = 0.92  # allocator fragmentation, workspace, the runtime itself
LAST_BUCKET = 0.1


@dataclass(frozen=True)
class Layout:
    dp: int = 1
    fsdp: int = 1
    tp: int = 1
    pp: int = 1
    microbatches: int = 1  # per step and replica: pipeline micro-batches, or accumulation steps when pp = 1
    schedule: str = "1f1b"  # gpipe | 1f1b | interleaved
    stages_per_rank: int = 1  # interleaved: model chunks per pipeline rank
    recompute: bool = False

    @property
    def world(self) -> int:
        return self.dp * self.fsdp * self.tp * self.pp

    def describe(self) -> str:
        dims = [f"{k}={v}" for k, v in (("dp", self.dp), ("fsdp", self.fsdp), ("tp", self.tp), ("pp", self.pp)) if v > 1] or ["dp=1"]
        extra = [f"mb={self.microbatches}"] + ([self.schedule + (f"x{self.stages_per_rank}" if self.schedule == "interleaved" else "")]
                                              if self.pp > 1 else []) + (["recompute"] if self.recompute else [])
        return " ".join(dims + extra)


@dataclass(frozen=True)
class Sync:
    """How replicas agree: all-reduce (default), a parameter server with `servers` servers, or averaging every `every` steps."""
    kind: str = "allreduce"  # allreduce | param_server | average
    servers: int = 1
    every: int = 1


@dataclass
class Prediction:
    layout: Layout
    step_s: float
    memory_bytes: float
    fits: bool
    time: dict[str, float] = field(default_factory=dict)  # seconds per step by part
    memory: dict[str, float] = field(default_factory=dict)  # bytes per device by part
    tokens_per_s: float = 0.0
    mfu: float = 0.0


def all_reduce_s(nbytes: float, n: int, bw: float, latency: float) -> float:
    """Ring all-reduce: each device sends and receives 2(n-1)/n of the buffer, in 2(n-1) latency-bound hops."""
    return 0.0 if n <= 1 else 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * latency


def reduce_scatter_s(nbytes: float, n: int, bw: float, latency: float) -> float:
    """Ring reduce-scatter of an nbytes buffer (each device ends with nbytes/n): half an all-reduce."""
    return 0.0 if n <= 1 else (n - 1) / n * nbytes / bw + (n - 1) * latency


def all_gather_s(nbytes: float, n: int, bw: float, latency: float) -> float:
    """Ring all-gather into an nbytes buffer: the same traffic as a reduce-scatter."""
    return reduce_scatter_s(nbytes, n, bw, latency)


RING = {"all_reduce": all_reduce_s, "all_gather": all_gather_s, "reduce_scatter": reduce_scatter_s}


def measured_s(device, kind: str, nbytes: float, n: int) -> float | None:
    """The time calibrate measured for this collective among `n` devices, interpolated at nbytes (log-log between the
    measured sizes, the smallest's below them, in proportion to bytes beyond the largest); None when not measured there."""
    sizes, times = device.message_bytes, getattr(device, f"{kind}_s")
    if n != device.measured_group or not times:
        return None
    if nbytes <= sizes[0]:
        return times[0]
    for s0, t0, s1, t1 in zip(sizes, times, sizes[1:], times[1:], strict=False):
        if nbytes <= s1:
            w = math.log(nbytes / s0) / math.log(s1 / s0)
            return t0 * (t1 / t0) ** w
    return times[-1] * nbytes / sizes[-1]


def bubble_fraction(pp: int, microbatches: int, schedule: str, stages_per_rank: int = 1) -> float:
    """Idle share of a pipeline step relative to its compute: (p-1)/m for GPipe and 1F1B, divided by v when interleaved."""
    if pp <= 1:
        return 0.0
    return (pp - 1) / (microbatches * (stages_per_rank if schedule == "interleaved" else 1))


def param_server_s(param_bytes: float, workers: int, servers: int, bw: float, latency: float) -> float:
    """Every worker pushes its gradient and pulls the parameters; each server's link carries its 1/servers share of both
    for all workers: 2 * workers * bytes / servers over one link (the bottleneck), plus a round trip."""
    return 2 * workers * param_bytes / servers / bw + 2 * latency


def averaging_s(param_bytes: float, n: int, every: int, bw: float, latency: float) -> float:
    """Local SGD: one all-reduce of the parameters every `every` steps, per step."""
    return all_reduce_s(param_bytes, n, bw, latency) / every


def group_link(cluster: Cluster, size: int, stride: int) -> tuple[float, float]:
    """(bytes/s, latency) of a group of `size` devices `stride` apart: inside one node, or across the network."""
    d = cluster.device
    if size * stride <= cluster.per_node:
        return d.intra_bw * 0.8, d.intra_latency_s
    return cluster.network.per_device_bw(cluster.per_node), cluster.network.latency_s


def collective_s(cluster: Cluster, kind: str, nbytes: float, size: int, stride: int) -> float:
    """One collective of a group of `size` devices `stride` apart: measured (inside a node, at the group size calibrate
    measured) or the ring model over the group's link."""
    if size <= 1:
        return 0.0
    if size * stride <= cluster.per_node:
        t = measured_s(cluster.device, kind, nbytes, size)
        if t is not None:
            return t
    return RING[kind](nbytes, size, *group_link(cluster, size, stride))


def optimizer_bytes_per_param(optimizer: str, dtype_bytes: int, momentum: bool = True) -> int:
    """Optimizer state per parameter: fp32 master weights when training in 16 bits, plus Adam's m and v or SGD's momentum."""
    master = 4 if dtype_bytes < 4 else 0
    moments = 8 if optimizer == "adamw" else (4 if momentum else 0)
    return master + moments


def in_flight(layout: Layout) -> float:
    """Micro-batches whose activations the busiest (first) stage holds at once."""
    if layout.pp <= 1:
        return 1.0  # accumulation frees each micro-batch's activations before the next
    if layout.schedule == "gpipe":
        return float(layout.microbatches)
    held = float(min(layout.pp, layout.microbatches))
    return held * (1 + (layout.pp - 1) / (layout.pp * layout.stages_per_rank)) if layout.schedule == "interleaved" else held


def predict(shape: ModelShape, layout: Layout, cluster: Cluster, optimizer: str = "adamw", sync: Sync = Sync()) -> Prediction:
    d, L = cluster.device, layout
    replicas = L.dp * L.fsdp
    seqs = shape.batch / replicas
    micro = seqs / L.microbatches
    rate = d.peak_flops * d.achievable
    # compute, and the pipeline's idle share
    flops = seqs * shape.seq * shape.train_flops_per_token(L.recompute) / (L.tp * L.pp)
    moved = shape.layers / L.pp * L.microbatches * shape.elementwise_bytes_per_layer(micro, L.tp, d.flash_attention, d.dtype_bytes,
                                                                                    L.recompute)
    matmuls, elementwise = flops / rate, moved / d.mem_bw if d.mem_bw else 0.0
    compute = matmuls + elementwise
    bubble = compute * bubble_fraction(L.pp, L.microbatches, L.schedule, L.stages_per_rank)
    backward = compute * (2 / 4 if L.recompute else 2 / 3)
    # tensor parallel: 2 all-reduces (or all-gather + reduce-scatter pairs) per layer forward, 2 backward, 2 more to recompute
    act = micro * shape.seq * shape.dim * d.dtype_bytes
    per_layer = 6 if L.recompute else 4
    pair = collective_s(cluster, "all_gather", act, L.tp, 1) + collective_s(cluster, "reduce_scatter", act, L.tp, 1)  # sequence parallel
    tp_comm = shape.layers / L.pp * L.microbatches * per_layer * pair
    # pipeline: each micro-batch's activations forward and gradients back over every stage boundary (per chunk)
    pp_bw, pp_lat = group_link(cluster, L.pp, L.tp * L.fsdp * L.dp)
    chunks = L.stages_per_rank if L.schedule == "interleaved" else 1
    pp_comm = 0.0 if L.pp <= 1 else 2 * L.microbatches * chunks * (act / L.tp / pp_bw + pp_lat)
    # data parallel: gradients (or parameters) of this device's share of the model
    params_device = shape.params() / (L.tp * L.pp)
    grad_bytes = params_device * d.dtype_bytes
    dp_bw, dp_lat = group_link(cluster, L.dp, L.tp * L.fsdp)
    fsdp_comm = (L.microbatches * 2 * collective_s(cluster, "all_gather", grad_bytes, L.fsdp, L.tp)
                 + collective_s(cluster, "reduce_scatter", grad_bytes, L.fsdp, L.tp))
    if sync.kind == "param_server":
        dp_comm = param_server_s(grad_bytes / L.fsdp, L.dp, sync.servers, dp_bw, dp_lat) if L.dp > 1 else 0.0
        window = 0.0  # push after backward, pull before the next forward: nothing overlaps
    elif sync.kind == "average":
        dp_comm, window = averaging_s(grad_bytes / L.fsdp, L.dp, sync.every, dp_bw, dp_lat), 0.0
    else:
        dp_comm = collective_s(cluster, "all_reduce", grad_bytes / L.fsdp, L.dp, L.tp * L.fsdp)
        window = backward / (L.microbatches if L.pp > 1 else 1)  # after a pipeline flush only the last backward overlaps
    if not d.overlaps_comm:  # gloo on CPU: the collectives take the cores the compute needs
        window = 0.0
    exposed = lambda comm, overlap: max(comm - overlap, LAST_BUCKET * comm) if comm else 0.0  # noqa: E731
    fsdp_exposed = exposed(fsdp_comm, compute if d.overlaps_comm else 0.0)
    dp_exposed = exposed(dp_comm, window) if window else dp_comm
    fixed = shape.layers / L.pp * L.microbatches * ((d.fsdp_layer_s if L.fsdp > 1 else 0.0)
                                                   + (d.tp_layer_s * (4 / 3 if L.recompute else 1.0) if L.tp > 1 else 0.0))
    time = {"compute": matmuls, "element-wise (memory-bound)": elementwise, "pipeline bubble": bubble,
            "tensor-parallel collectives": tp_comm, "pipeline sends": pp_comm,
            "fsdp gather/scatter (exposed)": fsdp_exposed, "gradient sync (exposed)": dp_exposed, "layout fixed costs": fixed}
    step = sum(time.values())
    # memory per device
    states = params_device * (2 * d.dtype_bytes + optimizer_bytes_per_param(optimizer, d.dtype_bytes)) / L.fsdp
    if L.recompute:  # each layer keeps its input; one layer's full working set is rebuilt at a time
        per_layer_act = micro * shape.seq * shape.dim * d.dtype_bytes / L.tp
        acts = shape.layers / L.pp * per_layer_act * in_flight(L) + shape.activation_bytes_per_layer(micro, L.tp, d.flash_attention, d.dtype_bytes)
    else:
        acts = shape.layers / L.pp * shape.activation_bytes_per_layer(micro, L.tp, d.flash_attention, d.dtype_bytes) * in_flight(L)
    logits = 2 * micro * shape.seq * shape.vocab * 4 / L.tp  # fp32 logits and their gradient, on the last stage
    gathered = 2 * shape.layer_params() / L.tp * d.dtype_bytes if L.fsdp > 1 else 0.0  # this layer and the prefetched next one
    memory = {"parameters, gradients, optimizer": states, "activations": acts, "logits": logits, "fsdp gathered layers": gathered}
    total = sum(memory.values())
    tokens = shape.batch * shape.seq / step if step else 0.0
    useful = shape.batch * shape.seq * shape.train_flops_per_token(False) / L.world
    return Prediction(L, step, total, total <= d.memory_bytes * HEADROOM, time, memory, tokens,
                      useful / step / d.peak_flops if step else 0.0)

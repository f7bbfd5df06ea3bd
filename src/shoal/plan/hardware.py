"""Devices and links the planner plans for: presets for common clusters, or a profile `shoal calibrate` measured.

Why presets: planning a 1,024-GPU run must not need the cluster. Figures are the vendors' dense
16-bit peaks and nominal one-direction link speeds; `achievable` is the share of peak that large
training matmuls reach (about 0.7 on these GPUs), `link_efficiency` the share of nominal bandwidth a
ring collective reaches, `mem_bw` what streaming (element-wise) kernels reach of the memory's nominal
bandwidth (STREAM-class kernels reach about 0.8 of it on HBM). A calibrated profile replaces them with
what this machine measured.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from shoal.errors import ShoalError


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float  # dense FLOP/s in the training dtype
    memory_bytes: float
    intra_bw: float  # bytes/s one way per device inside a node (NVLink, Infinity Fabric; shared memory on a CPU)
    intra_latency_s: float
    achievable: float = 0.7
    flash_attention: bool = True  # fused attention: the scores are not kept for backward
    dtype_bytes: int = 2  # bf16 weights, gradients and activations (optimizer state stays fp32)
    overlaps_comm: bool = True  # collectives run beside compute (GPU copy engines); on CPU gloo takes the same cores
    mem_bw: float = 0.0  # bytes/s element-wise kernels stream from device memory (0: their time is not modelled)
    # collectives `shoal calibrate` timed inside a node among `measured_group` devices, seconds per message size:
    # used instead of the ring model where a group of that size sits in one node (libraries are not all rings)
    measured_group: int = 0
    message_bytes: tuple = ()
    all_reduce_s: tuple = ()
    all_gather_s: tuple = ()
    reduce_scatter_s: tuple = ()
    # seconds per layer and micro-batch that FSDP2 / tensor parallelism add beyond FLOPs and bytes (hooks, DTensor
    # dispatch, copies; calibrate measures them on a tiny GPT: plan/fixed_costs.py); 0 in the GPU presets, whose large
    # kernels leave the host's work in their shadow
    fsdp_layer_s: float = 0.0
    tp_layer_s: float = 0.0


@dataclass(frozen=True)
class Network:
    name: str
    bw: float  # bytes/s one way per device between nodes (one NIC per device: rail-optimized)
    latency_s: float
    efficiency: float = 0.8
    shared: bool = False  # one link per node, shared by its devices (plain Ethernet)

    def per_device_bw(self, per_node: int) -> float:
        return self.bw * self.efficiency / (per_node if self.shared else 1)


@dataclass(frozen=True)
class Cluster:
    device: Device
    network: Network
    nodes: int
    per_node: int

    @property
    def world(self) -> int:
        return self.nodes * self.per_node

    def describe(self) -> str:
        return f"{self.nodes} x {self.per_node} {self.device.name}, {self.network.name} between nodes"


GB, TF = 1e9, 1e12
STREAM = 0.8  # the share of nominal memory bandwidth streaming kernels reach
DEVICES = {
    "a100": Device("A100-80GB", 312 * TF, 80 * GB, 300 * GB, 3e-6, mem_bw=STREAM * 2039 * GB),
    "h100": Device("H100-SXM", 989 * TF, 80 * GB, 450 * GB, 3e-6, mem_bw=STREAM * 3350 * GB),
    "h200": Device("H200-SXM", 989 * TF, 141 * GB, 450 * GB, 3e-6, mem_bw=STREAM * 4800 * GB),
    "mi300x": Device("MI300X", 1307 * TF, 192 * GB, 448 * GB, 4e-6, achievable=0.55, mem_bw=STREAM * 5300 * GB),
    # Shoal's own CPU path: fp32 everywhere, unfused attention; 2 processes sharing a 2-core machine.
    "cpu": Device("CPU (2 cores)", 0.15 * TF, 24 * GB, 0.8 * GB, 50e-6, achievable=0.3, flash_attention=False, dtype_bytes=4,
                  overlaps_comm=False),
}
NETWORKS = {
    "nvlink": Network("NVLink switch (NVL72-class)", 450 * GB, 3e-6, 0.85),
    "ib": Network("InfiniBand NDR 400 Gb/s per GPU", 50 * GB, 5e-6, 0.8),
    "ib-hdr": Network("InfiniBand HDR 200 Gb/s per GPU", 25 * GB, 5e-6, 0.8),
    "roce": Network("RoCE 400 Gb/s per GPU", 50 * GB, 8e-6, 0.7),
    "ethernet": Network("Ethernet 100 Gb/s per node", 12.5 * GB, 30e-6, 0.6, shared=True),
}


def preset(name: str, nodes: int, per_node: int) -> Cluster:
    device, _, network = name.lower().partition(":")
    if device not in DEVICES:
        raise ShoalError(f"plan --cluster: unknown device '{device}'; presets: {', '.join(DEVICES)} (or a profile file)")
    network = network or ("ethernet" if device == "cpu" else "ib")
    if network not in NETWORKS:
        raise ShoalError(f"plan --cluster: unknown network '{network}'; presets: {', '.join(NETWORKS)}")
    return Cluster(DEVICES[device], NETWORKS[network], nodes, per_node)


def load_cluster(spec: str, nodes: int, per_node: int) -> Cluster:
    """A preset DEVICE[:NETWORK], or the path of a profile file written by `shoal calibrate`."""
    if nodes < 1 or per_node < 1:
        raise ShoalError(f"plan: --nodes and --devices-per-node must be at least 1 (got {nodes} and {per_node})")
    path = Path(spec)
    if not (path.suffix == ".toml" or path.is_file()):
        return preset(spec, nodes, per_node)
    if not path.is_file():
        raise ShoalError(f"plan --cluster: profile file '{path}' not found (write one with `shoal calibrate --out {path}`)")
    try:
        data = tomllib.loads(path.read_text())
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in data["device"].items()}
        device, network = Device(**given), Network(**data["network"])
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as err:
        raise ShoalError(f"plan --cluster: '{path}' is not a profile from `shoal calibrate` ({err})") from None
    return Cluster(device, network, nodes, per_node)


def profile_toml(device: Device, network: Network, measured: dict) -> str:
    """The profile file: [device] and [network] as the planner reads them, and [measured] with the raw numbers."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(float(v)) if isinstance(v, float) else repr(v)

    def table(name: str, values: dict) -> str:
        return f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in values.items())
    return "# written by `shoal calibrate`; use with `shoal plan --cluster THIS_FILE`\n" + "\n".join(
        [table("device", asdict(device)), table("network", asdict(network)), table("measured", measured)])

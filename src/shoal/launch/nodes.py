"""What `--nnodes N[:M] --node-rank R --rdzv HOST:PORT` mean, checked once, and this node's address on the job's network."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from dataclasses import dataclass

from shoal.errors import ShoalError

MAX_NODES = 4096


@dataclass(frozen=True)
class NodeSpec:
    """A multi-node job as one node sees it. Node rank 0 hosts the rendezvous store."""

    min_nodes: int
    max_nodes: int
    node_rank: int
    rdzv_host: str
    rdzv_port: int

    @property
    def endpoint(self) -> str:
        return f"{self.rdzv_host}:{self.rdzv_port}"

    @property
    def is_host(self) -> bool:
        return self.node_rank == 0

    @property
    def elastic(self) -> bool:
        return self.min_nodes != self.max_nodes


def parse_nnodes(text: str) -> tuple[int, int]:
    """'2' -> (2, 2); '1:3' -> (1, 3): elastic membership between 1 and 3 nodes."""
    low, sep, high = text.strip().partition(":")
    try:
        lo, hi = int(low), int(high) if sep else int(low)
    except ValueError:
        raise ShoalError(f"--nnodes '{text}': write a node count N or a range MIN:MAX, e.g. --nnodes 2 or --nnodes 1:3") from None
    if not 1 <= lo <= hi <= MAX_NODES:
        raise ShoalError(f"--nnodes '{text}': need 1 <= MIN <= MAX <= {MAX_NODES}, e.g. --nnodes 2:4")
    return lo, hi


def node_counts(min_nodes: int, max_nodes: int) -> range:
    """Every node count an elastic job may run at (the batch must split over each); the first 64 of a wide range."""
    return range(min_nodes, min(max_nodes, min_nodes + 63) + 1)


def parse_rdzv(text: str) -> tuple[str, int]:
    """'HOST:PORT' of the rendezvous store (hosted by node rank 0); IPv6 as [ADDR]:PORT."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ShoalError(f"--rdzv '{text}': write HOST:PORT of the node with --node-rank 0, e.g. --rdzv 10.0.0.1:29400")
    return host, int(port)


def node_spec(nnodes: str | None, node_rank: int | None, rdzv: str | None) -> NodeSpec | None:
    """None for a one-machine job; otherwise a checked NodeSpec. Every bad value names its option."""
    if nnodes is None:
        if rdzv is not None or node_rank is not None:
            raise ShoalError("--rdzv and --node-rank need --nnodes N[:M]; leave all three out to train on this machine only")
        return None
    lo, hi = parse_nnodes(nnodes)
    if rdzv is None:
        if hi > 1:
            raise ShoalError(f"--nnodes {nnodes} needs --rdzv HOST:PORT, the address every node reaches node rank 0 at")
        rdzv = f"127.0.0.1:{_free_port()}"
    if node_rank is None and hi > 1:
        raise ShoalError("--node-rank is required with --nnodes: 0 on the node that hosts the rendezvous, 1, 2, ... on the others")
    node_rank = node_rank or 0
    if not 0 <= node_rank < hi:
        raise ShoalError(f"--node-rank {node_rank}: must be between 0 and {hi - 1} for --nnodes {nnodes}")
    host, port = parse_rdzv(rdzv)
    return NodeSpec(lo, hi, node_rank, host, port)


def _free_port() -> int:
    from shoal.distributed.env import free_port

    return free_port()


def route_address(host: str, port: int) -> str:
    """The local address packets to HOST leave from: this node's address on the job's network (no packet is sent)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port))
            return s.getsockname()[0]
    except OSError as err:
        raise ShoalError(f"--rdzv {host}:{port}: no route to {host} from this machine ({err.strerror or err}); check the address") from None


def interface_of(address: str) -> str | None:
    """The network interface holding an IPv4 address (gloo binds to an interface, not an address), or None."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
        if socket.inet_ntoa(packed[20:24]) == address:
            return name
    return None


def bind_gloo_to_route(host: str, port: int) -> str:
    """gloo binds to the interface the hostname resolves to, often 127.0.0.1: use the one that reaches `host` instead
    (unless GLOO_SOCKET_IFNAME says otherwise). Returns this machine's address on that route."""
    address = route_address(host, port)
    interface = interface_of(address)
    if interface and interface != "lo":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    return address

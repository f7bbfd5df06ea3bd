"""`shoal calibrate --nnodes N --node-rank R --rdzv HOST:PORT`: the links between hosts, measured.

One process per node joins a gloo group (torch.distributed's TCP rendezvous at node rank 0's
HOST:PORT, the address `shoal train --rdzv` takes). Every pair of nodes, one pair at a time so no two
measurements share a link, and each direction on its own (links need not be symmetric), times a small
and a large message answered by a one-number acknowledgement: latency is half the small round trip,
bandwidth what the large message adds (the alpha-beta model the planner uses). A pair's figures are its
slower direction's; the planner's [network] is the slowest pair, since a collective over all nodes runs
at the pace of its slowest link. One stream per node measures the node's link, so the profile marks it
`shared` by the node's processes.
"""

from __future__ import annotations

import itertools
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from shoal.errors import ShoalError
from shoal.launch.nodes import bind_gloo_to_route, parse_rdzv
from shoal.plan.hardware import Network

SMALL, LARGE = 4096, 4 << 20  # bytes


def _send_and_ack_s(rank: int, sender: int, receiver: int, size: int, repeats: int) -> float:
    """Median seconds from `sender` starting a `size`-byte message to `receiver`'s one-number acknowledgement arriving
    (every rank calls; the others just wait). One direction at a time: links need not be symmetric."""
    buffer, ack = torch.zeros(size // 4), torch.zeros(1)
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        if rank == sender:
            dist.send(buffer, receiver)
            dist.recv(ack, receiver)
            times.append(time.perf_counter() - t0)
        elif rank == receiver:
            dist.recv(buffer, sender)
            dist.send(ack, sender)
    measured = torch.tensor([sorted(times)[len(times) // 2] if times else 0.0], dtype=torch.float64)
    dist.broadcast(measured, sender)
    return float(measured)


def _direction(rank: int, sender: int, receiver: int, repeats: int) -> dict:
    """Latency (half the small round trip) and bandwidth (what the large message adds) from sender to receiver."""
    small = _send_and_ack_s(rank, sender, receiver, SMALL, repeats)
    large = _send_and_ack_s(rank, sender, receiver, LARGE, repeats)
    return {"latency_s": small / 2, "bw": (LARGE - SMALL) / max(large - small, 1e-9)}


def measure_links(nnodes: int, node_rank: int, rdzv: str, repeats: int = 5, timeout_s: float = 120.0) -> dict:
    """Every pair's latency and bandwidth, on every node (collective over the nodes)."""
    if nnodes < 2:
        raise ShoalError("calibrate --nnodes: links between hosts need at least 2 nodes")
    if not 0 <= node_rank < nnodes:
        raise ShoalError(f"calibrate --node-rank: {node_rank} is not in 0 .. {nnodes - 1}")
    host, port = parse_rdzv(rdzv)
    bind_gloo_to_route(host, port)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://{rdzv}", rank=node_rank, world_size=nnodes,
                                timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as err:
        raise ShoalError(f"calibrate: the nodes did not meet at --rdzv {rdzv} within {timeout_s:g} s "
                         f"({str(err).splitlines()[0][:160]}); start the same command on every node") from None
    try:
        pairs = {}
        for a, b in itertools.combinations(range(nnodes), 2):
            there, back = _direction(node_rank, a, b, repeats), _direction(node_rank, b, a, repeats)
            pairs[f"{a}-{b}"] = {"latency_s": max(there["latency_s"], back["latency_s"]), "bw": min(there["bw"], back["bw"])}
    finally:
        dist.destroy_process_group()
    return pairs


def slowest(pairs: dict, nnodes: int) -> Network:
    """The planner's network: the slowest pair's bandwidth, the highest latency."""
    name, worst = min(pairs.items(), key=lambda kv: kv[1]["bw"])
    latency = max(p["latency_s"] for p in pairs.values())
    return Network(f"measured between {nnodes} nodes (slowest pair: nodes {name})", worst["bw"], latency, 1.0, shared=True)

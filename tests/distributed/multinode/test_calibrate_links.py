"""`shoal calibrate --nnodes 2` between two namespace "machines" whose link is shaped to 100 Mbit/s (tc tbf on one end;
this kernel has no netem, so latency is not shaped): the profile node rank 0 writes holds the measured link, and
`shoal plan` reads it."""

from __future__ import annotations

import random
import subprocess
import sys
import tomllib

import pytest

pytestmark = pytest.mark.dist

RATE_BYTES = 100e6 / 8


def shape(net, node: int) -> None:
    subprocess.run(["ip", "netns", "exec", net.names[node], "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
                    "rate", "100mbit", "burst", "32kbit", "latency", "400ms"], check=True, capture_output=True, timeout=10)


def test_links_between_hosts_are_measured_into_the_profile(network, tmp_path):
    net = network(2)
    try:
        shape(net, 1)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot shape links with tc here: {err}")
    rdzv = f"{net.address(0)}:{random.randint(20000, 29000)}"
    profile = tmp_path / "cluster.toml"
    procs = [net.start(i, [sys.executable, "-m", "shoal", "calibrate", "--nnodes", "2", "--node-rank", str(i), "--rdzv", rdzv,
                           "--seconds", "0.05", "--out", str(profile)], tmp_path / f"node{i}.log") for i in (1, 0)]
    for proc in procs:
        proc.wait(timeout=180)
    logs = {i: (tmp_path / f"node{i}.log").read_text() for i in (0, 1)}
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "links measured; node rank 0 writes" in logs[1] and f"wrote {profile}" in logs[0], logs
    data = tomllib.loads(profile.read_text())
    link = data["network"]
    assert link["shared"] and "measured between 2 nodes" in link["name"]
    assert 0.6 * RATE_BYTES < link["bw"] < 1.1 * RATE_BYTES, link  # the shaper's rate, not loopback's GB/s
    assert 0 <= link["latency_s"] < 0.05, link
    assert data["measured"]["link_pairs"] == ["0-1"]
    planned = subprocess.run([sys.executable, "-m", "shoal", "plan", "examples/gpt_shakespeare.toml", "--cluster", str(profile),
                              "--nodes", "2", "--devices-per-node", "1"], capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0 and "measured between 2 nodes" in planned.stdout, planned.stdout + planned.stderr

"""Several "machines" on one: a network namespace per node, each with a veth `eth0` into a bridge
that lives in a namespace of its own. The root namespace is never touched; everything this
module makes carries a per-run prefix and is removed by `Network.close()`."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def namespaces_available() -> str | None:
    """None when this process can build namespaces, else why not (the tests skip with it)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"shoalprobe{uuid.uuid4().hex[:6]}"
    try:
        ip("netns", "add", probe)
        ip("netns", "del", probe)
    except (OSError, subprocess.SubprocessError) as err:
        return f"cannot create network namespaces here: {err}"
    return None


class Network:
    """N nodes at 10.77.S.1 ... 10.77.S.N on one bridge; S is random per run."""

    def __init__(self, nodes: int):
        self.prefix = f"sh{uuid.uuid4().hex[:6]}"
        self.subnet = random.randint(1, 254)
        self.bridge_ns = f"{self.prefix}-br"
        self.names = [f"{self.prefix}-n{i}" for i in range(nodes)]
        self.procs: list[subprocess.Popen] = []
        self._made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def address(self, node: int) -> str:
        return f"10.77.{self.subnet}.{node + 1}"

    def _build(self) -> None:
        ip("netns", "add", self.bridge_ns)
        self._made.append(self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names):
            ip("netns", "add", ns)
            self._made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", self.bridge_ns, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.bridge_ns, "link", "set", f"v{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def retransmit_quickly(self, rto_max_ms: int = 1000, retries: int = 255) -> None:
        """Cap TCP's retransmission back-off in every node (per-namespace sysctls): after a cut of two minutes the
        kernel's next retry, and so the news that a peer is gone, would otherwise come up to two minutes after the
        cable is back. The most retries the kernel allows (255, about 4 minutes at that cap) keep a connection
        from giving up before the job's own timeouts do."""
        for ns in self.names:
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv4.tcp_rto_max_ms={rto_max_ms}",
                            f"net.ipv4.tcp_retries2={retries}"], check=True, capture_output=True, timeout=10)

    def link(self, node: int, up: bool) -> None:
        """Cut (or restore) a node's cable."""
        ip("-n", self.names[node], "link", "set", "eth0", "up" if up else "down")

    def start(self, node: int, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Run argv inside the node's namespace, in a session of its own so the whole node can be killed."""
        full_env = {**os.environ, **(env or {})}
        with open(log, "w") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.names[node], *argv], stdout=out, stderr=subprocess.STDOUT,
                                    env=full_env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill_node(self, proc: subprocess.Popen) -> None:
        """kill -9 everything one node started (its agent and workers share the session's process group)."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill_node(proc)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:  # workers that outlived their agent still carry its process group id
            self.kill_node(proc)
        time.sleep(0.1)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made.clear()

"""The job and the command lines the namespace tests run on every node."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from job_files import digits_mlp

JOB = digits_mlp("multinode-test", seed=1, data='partition = "round_robin"\n', rest="""\
[train]
global_batch_size = 60
steps = 6
log_every = 2
[optimizer]
name = "adamw"
lr = 0.01
""")

RDZV_PORT = random.randint(20000, 29000)  # inside the test's own namespaces; never 29500


def node_command(net, node: int, job: Path, out: Path, nnodes: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shoal", "train", str(job), "--nproc", "1", "--out", str(out), "--nnodes", nnodes,
            "--node-rank", str(node), "--rdzv", f"{net.address(0)}:{RDZV_PORT}", *extra]


def wait_all(procs: list[subprocess.Popen], logs: Path, timeout: float) -> None:
    """Every node exits 0 within `timeout` seconds, or the test fails with the node logs."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
    codes = [p.poll() for p in procs]
    if codes != [0] * len(procs):
        tails = "\n".join(f"--- {f.name}\n{f.read_text()[-2500:]}" for f in sorted(logs.glob("node*.log")))
        raise AssertionError(f"node exit codes {codes} (None = still running after {timeout} s)\n{tails}")

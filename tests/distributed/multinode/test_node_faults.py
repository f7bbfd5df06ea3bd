"""An elastic job (--nnodes 1:2) across two namespaces loses a whole node (agent and worker
killed with SIGKILL) mid-run: the survivor restarts its worker, resumes from the newest
checkpoint and finishes alone. Prints the time from the kill to training again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from multinode_jobs import JOB, node_command, wait_all

pytestmark = pytest.mark.dist

LONG_JOB = JOB.replace("steps = 6", "steps = 120").replace("log_every = 2", "log_every = 1") + "[checkpoint]\nevery = 10\n"
PACE = {"SHOAL_TEST_SLOW_RANK": "*", "SHOAL_TEST_SLOW_S": "0.03"}  # test-only: each step takes >= 30 ms, so a kill lands mid-run


def records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_killing_a_node_restarts_the_job_and_it_finishes(network, tmp_path):
    net = network(2)
    job = tmp_path / "job.toml"
    job.write_text(LONG_JOB)
    out = tmp_path / "run"
    procs = [net.start(i, node_command(net, i, job, out, "1:2", "--max-restarts", "3"), tmp_path / f"node{i}.log", PACE)
             for i in range(2)]
    wait_for(lambda: any(r.get("step", 0) >= 15 and r["kind"] == "train" for r in records(out)), 90, "training on two nodes")
    killed_at = time.monotonic()
    net.kill_node(procs[1])
    resumed = wait_for(lambda: [r for r in records(out) if r["kind"] == "resume"], 60, "the survivor to resume")[0]
    wait_for(lambda: any(r["kind"] == "train" and r["step"] > resumed["step"] for r in records(out)), 30, "training again")
    back_after = time.monotonic() - killed_at
    print(f"kill -> training again: {back_after:.1f} s (resumed at step {resumed['step']} with world size {resumed['world_size']})")
    wait_all(procs[:1], tmp_path, timeout=60)
    final = records(out)
    assert resumed["world_size"] == 1 and 10 <= resumed["step"] < 120
    assert max(r["step"] for r in final if r["kind"] == "train") == 120
    assert (out / "model.pt").exists()

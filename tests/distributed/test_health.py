"""A rank that stops answering is named (rank, host, pid, last step) within dist.timeout_s; a slowed
rank is named a straggler. Both use test-only hooks of shoal.distributed.fault_injection (SHOAL_TEST_HANG,
SHOAL_TEST_SLOW_RANK)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job_files import digits_mlp

pytestmark = pytest.mark.dist

JOB = digits_mlp("health-test", """\
[train]
global_batch_size = 20
steps = {steps}
log_every = 4
[dist]
timeout_s = {timeout}
[health]
heartbeat_s = 0.2
straggler_windows = 2
""")


def train(tmp_path: Path, env: dict[str, str], steps: int, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(steps=steps, timeout=timeout))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "shoal", "train", str(job), "--nproc", "2", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=150, env={**os.environ, **env})
    return proc, time.monotonic() - t0


def test_a_rank_that_stops_answering_is_named_within_the_timeout(tmp_path):
    proc, took = train(tmp_path, {"SHOAL_TEST_HANG": "1:3"}, steps=40, timeout=4)
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "dist.timeout_s = 4" in line, line
    assert re.search(r"did not arrive: rank 1 \(host [^,]+, pid \d+, last step 3", line), line
    assert "collective at step 4" in line
    assert took < 4 + 60  # start-up on 2 shared cores, then the timeout itself


def test_a_rank_missing_outside_a_step_is_named_too(tmp_path):
    """A collective of an evaluation (or a record, a checkpoint) times out: the same one line as in a step, not
    gloo's raw message."""
    proc, _ = train(tmp_path, {"SHOAL_TEST_HANG_BEFORE": "1:evaluation after step 15"}, steps=40, timeout=4)
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert "collective in the evaluation after step 15 failed on rank 0 (dist.timeout_s = 4)" in line, line
    assert re.search(r"did not arrive: rank 1 \(host [^,]+, pid \d+, last step 15", line), line


def test_a_slowed_rank_is_reported_as_a_straggler(tmp_path):
    proc, _ = train(tmp_path, {"SHOAL_TEST_SLOW_RANK": "1", "SHOAL_TEST_SLOW_S": "0.03"}, steps=24, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    stragglers = [r for r in records if r["kind"] == "straggler"]
    assert stragglers and {r["rank"] for r in stragglers} == {1}
    first = stragglers[0]
    assert first["step"] == 8  # two log windows of 4 steps in a row
    assert first["step_s"] > 1.5 * first["median_s"] and first["host"]
    assert "straggler: rank 1" in proc.stderr

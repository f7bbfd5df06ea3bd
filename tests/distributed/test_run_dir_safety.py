"""Real `shoal train` processes on one run directory: a second job is refused while the first holds it, and a
restart after --overwrite never resumes the old job's checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from job_files import digits_mlp

pytestmark = pytest.mark.dist


def shoal_train(job: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "shoal", "train", str(job), "--out", str(out), *args]


def records(run: Path, kind: str) -> list[dict]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, (line for line in lines if line.endswith("}"))) if r["kind"] == kind]  # whole lines


def test_a_second_job_on_the_same_out_is_refused_while_the_first_runs(tmp_path):
    job, out = tmp_path / "job.toml", tmp_path / "run"
    job.write_text(digits_mlp("busy", "[train]\nglobal_batch_size = 50\nsteps = 60\nlog_every = 1\n"))
    slow = {**os.environ, "SHOAL_TEST_SLOW_RANK": "1", "SHOAL_TEST_SLOW_S": "0.2"}  # >= 12 s of training
    first = subprocess.Popen(shoal_train(job, out, "--nproc", "2"), env=slow, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        while not records(out, "train"):  # the workers are training; the run's deadline is the wait below
            assert first.poll() is None, first.stderr.read()[-3000:]
            time.sleep(0.2)
        second = subprocess.run(shoal_train(job, out, "--nproc", "2", "--overwrite"), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        err = second.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err
        assert str(out) in err and f"pid {first.pid}" in err, err
        _, first_err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=60)
    assert first.returncode == 0, first_err[-3000:]
    assert [r["step"] for r in records(out, "train")] == list(range(1, 61))
    assert not records(out, "resume")


REST = "[train]\nglobal_batch_size = 50\nsteps = 10\nlog_every = 1\n[checkpoint]\nevery = {every}\n"


def test_a_restart_after_overwrite_never_resumes_the_old_jobs_checkpoint(tmp_path):
    old, new, out = tmp_path / "old.toml", tmp_path / "new.toml", tmp_path / "run"
    old.write_text(digits_mlp("old", REST.format(every=2), seed=1))
    new.write_text(digits_mlp("new", REST.format(every=4), seed=2))
    subprocess.run(shoal_train(old, out, "--nproc", "1"), check=True, capture_output=True, timeout=120)
    killed = {**os.environ, "SHOAL_TEST_KILL": "0:3"}  # before the new job's first checkpoint
    proc = subprocess.run(shoal_train(new, out, "--nproc", "1", "--overwrite", "--max-restarts", "1"), env=killed,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not records(out, "resume"), "no checkpoint of this run existed when it was killed"
    assert [r["step"] for r in records(out, "train")] == list(range(1, 11))
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    markers = [json.loads(p.read_text()) for p in (out / "checkpoints").glob("step-*/shoal.json")]
    assert markers and all(m["job"] == "new" and m["run_id"] == run_id for m in markers), markers

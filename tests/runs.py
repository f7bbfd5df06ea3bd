"""Run `shoal train` as a user does and read what the run directory holds (shared by the multi-process tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def shoal_train(job: Path, out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "shoal", "train", str(job), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_here(job: Path, out: Path, nproc: int, *sets: str) -> Path:
    """What `shoal train JOB --out OUT --nproc N --set ...` writes, trained by workers forked from this test process's
    fork server (launch_local, with the job file loaded as the CLI loads it and the CLI's worker entry): the same run
    directory and weights, without a new interpreter's start-up (about 5 s). For runs whose console output no test reads."""
    from shoal.config import load_job
    from shoal.job.worker import worker_main
    from shoal.launch.local import launch_local

    cfg = load_job(job, [*sets, f"nproc={nproc}"])
    results = launch_local(worker_main, (cfg.model_dump(), str(out), False, False, None), nproc)
    errors = [r["error"] for r in results.values() if isinstance(r, dict) and "error" in r]
    assert not errors, errors
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def killed_run_matches_uninterrupted(job_text: str, tmp_path: Path, part: str | None = "compressor", nproc: int = 2,
                                     rank: int = 1) -> Path:
    """Run an `nproc`-process job twice, once with `rank` SIGKILLed after step 6 and restarted: the launcher says so in one
    line, the restart resumes from step 4 with `part` (if named) restored and ends bit-identical (weights and every loss).
    Returns the uninterrupted run."""
    job = tmp_path / "job.toml"
    job.write_text(job_text)
    ref, out = tmp_path / "ref", tmp_path / "run"
    train_here(job, ref, nproc)  # the uninterrupted run: no console line of its is checked
    restarted = shoal_train(job, out, "--nproc", str(nproc), "--max-restarts", "1", env={"SHOAL_TEST_KILL": f"{rank}:6"})
    said = [line for line in restarted.stderr.splitlines() if "restarting the workers" in line]  # one Shoal line, no traceback
    named = f"worker rank {rank} on " in said[0] and "(killed by SIGKILL)" in said[0] if said else False
    assert len(said) == 1 and "restart 1 of 1" in said[0] and named, said  # the killed rank, not a peer that lost it
    assert "Traceback" not in restarted.stderr, restarted.stderr[-2000:]
    resumed = records(out, "resume")
    assert resumed and resumed[0]["step"] == 4 and (part is None or part in resumed[0]["parts"]), resumed
    a, b = weights(ref), weights(out)
    losses = [r["loss"] for r in records(ref, "train")], [r["loss"] for r in records(out, "train")]
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)
    assert losses[0] == losses[1]
    return ref

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


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]

"""A checkpoint written by 4 processes with fsdp=4 continues on 1, 2 and 3 processes and with tp=2:
the losses after the resume equal the uninterrupted fsdp=4 run's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runs import train_here

pytestmark = pytest.mark.dist

JOB = """
name = "reshard"
seed = 6
[model]
name = "mlp"
hidden = [32, 32, 32]
[data]
name = "digits"
[optimizer]
name = "adamw"
lr = 0.003
[train]
global_batch_size = 96   # divisible by 1, 2, 3 and 4 data-parallel ranks
steps = 12
log_every = 1
threads = 1
[checkpoint]
every = 6
at_end = false
"""


def train(job: Path, out: Path, nproc: int, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "shoal", "train", str(job), "--out", str(out), "--nproc", str(nproc), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.fixture(scope="module")
def fsdp4_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("reshard")
    job = tmp / "job.toml"
    job.write_text(JOB)
    run = tmp / "fsdp4"
    train_here(job, run, 4, "parallel.fsdp=4")  # the uninterrupted run, trained in-process
    return job, run


@pytest.mark.parametrize("nproc,layout", [(1, []), (2, ["--set", "parallel.fsdp=2"]), (3, []), (2, ["--set", "parallel.tp=2"])],
                         ids=["1-process", "fsdp2", "dp3", "tp2"])
def test_fsdp4_checkpoint_continues_on_another_layout(fsdp4_run, tmp_path, nproc, layout):
    job, whole = fsdp4_run
    out = tmp_path / "run"
    out.mkdir()
    ckpt = whole / "checkpoints" / "step-00000006"
    (out / "checkpoints").mkdir()
    subprocess.run(["cp", "-r", str(ckpt), str(out / "checkpoints")], check=True)
    (out / "metrics.jsonl").write_text("")
    train(job, out, nproc, "--resume", *layout)
    expected, got = losses(whole), losses(out)
    assert sorted(got) == list(range(7, 13))
    assert [got[s] for s in range(7, 13)] == pytest.approx([expected[s] for s in range(7, 13)], abs=1e-5)

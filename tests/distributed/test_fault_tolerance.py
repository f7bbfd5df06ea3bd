"""Kill a worker (a real SIGKILL) at a random step or mid-checkpoint: the job restarts, resumes from
its newest complete checkpoint, and ends bit-identical to a run that was never interrupted."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runs import records, shoal_train, train_here, weights

pytestmark = pytest.mark.dist

JOB = """
name = "ft"
seed = 4
[model]
name = "mlp"
hidden = [32]
dropout = 0.2            # RNG state must survive the restart too
[data]
name = "digits"
partition = "random"
[optimizer]
name = "adamw"
lr = 0.005
[train]
global_batch_size = 64
epochs = 1               # 23 steps
log_every = 1
[checkpoint]
every = 4
keep = 2
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ft") / "job.toml"
    path.write_text(JOB)
    return path


@pytest.fixture(scope="module")
def reference(job) -> dict[str, Path]:
    """Uninterrupted runs, one per layout."""
    runs = {}
    for layout, sets in {"dp": [], "fsdp": ["--set", "parallel.fsdp=2"]}.items():
        runs[layout] = train_here(job, job.parent / f"ref-{layout}", 2, *sets[1:])
    return runs


@pytest.mark.parametrize("layout,seed", [("dp", 0), ("dp", 1), ("fsdp", 2)])
def test_killed_worker_restarts_and_ends_bit_identical(job, reference, tmp_path, layout, seed):
    pick = random.Random(seed)
    rank, step = pick.randrange(2), pick.randrange(5, 22)
    sets = ["--set", "parallel.fsdp=2"] if layout == "fsdp" else []
    out = tmp_path / "run"
    shoal_train(job, out, "--nproc", "2", "--max-restarts", "2", *sets, env={"SHOAL_TEST_KILL": f"{rank}:{step}"})
    resumed = records(out, "resume")
    assert resumed and resumed[0]["step"] == step // 4 * 4, resumed  # from the newest checkpoint before the kill
    ref, got = weights(reference[layout]), weights(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref), f"killed rank {rank} at step {step}"
    steps = [r["step"] for r in records(out, "train")]
    assert steps == list(range(1, 24)), "every step logged exactly once after the resume trimmed the redone ones"


def test_kill_during_checkpoint_write_keeps_the_previous_one(job, reference, tmp_path):
    out = tmp_path / "run"
    shoal_train(job, out, "--nproc", "2", "--max-restarts", "1", env={"SHOAL_TEST_KILL": "1:12:save"})
    assert records(out, "resume")[0]["step"] == 8  # step 12's checkpoint never committed
    ref, got = weights(reference["dp"]), weights(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_resume_on_another_world_size_and_export(job, tmp_path):
    """A checkpoint written by 2 processes continues on 1. The global batches are the same, so without
    dropout (whose masks depend on the world size) the result agrees with an uninterrupted run to 1e-5."""
    no_dropout = ["--set", "model.dropout=0.0"]
    whole, out = tmp_path / "whole", tmp_path / "run"
    train_here(job, whole, 1, no_dropout[1])
    shoal_train(job, out, "--nproc", "2", "--set", "train.steps=10", *no_dropout)
    shoal_train(job, out, "--nproc", "1", "--resume", *no_dropout)
    resumed = records(out, "resume")[0]
    assert (resumed["step"], resumed["world_size"]) == (10, 1)
    ref, got = weights(whole), weights(out)
    assert max((ref[k] - got[k]).abs().max().item() for k in ref) < 1e-5
    exported = tmp_path / "exported.pt"
    subprocess.run([sys.executable, "-m", "shoal", "export", str(out), "--out", str(exported)], check=True, timeout=120, capture_output=True)
    assert all(torch.equal(got[k], v) for k, v in torch.load(exported, weights_only=True).items())

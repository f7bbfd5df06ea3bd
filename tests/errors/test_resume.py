"""Category: resume problems. A run that cannot be continued as asked is refused with one line, the run directory
untouched; a damaged newest checkpoint is passed over, with a warning, for the newest intact one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from error_contract import BASE, job_file, refused
from shoal.cli import main

JOB = BASE.replace("steps = 1", "steps = 4") + "[checkpoint]\nevery = 2\n"


def _train(job: Path, out: Path, *args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(["train", str(job), "--out", str(out), *args])
    return done.value.code


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One run of 4 steps with checkpoints at steps 2 and 4, trained once; each test gets a copy."""
    root = tmp_path_factory.mktemp("finished")
    assert _train(job_file(root, JOB), root / "run") == 0
    return root / "run"


@pytest.fixture
def run(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def newest_shard(run: Path, step: int = 4) -> Path:
    return next((run / "checkpoints" / f"step-{step:08d}").glob("*.distcp"))


def delete_shard(run: Path, step: int = 4) -> None:
    newest_shard(run, step).unlink()


def truncate_shard(run: Path, step: int = 4) -> None:
    shard = newest_shard(run, step)
    shard.write_bytes(shard.read_bytes()[:100])


def truncate_metadata(run: Path, step: int = 4) -> None:
    meta = run / "checkpoints" / f"step-{step:08d}" / ".metadata"
    meta.write_bytes(meta.read_bytes()[:20])


def every_damaged(run: Path) -> None:
    delete_shard(run, 2)
    truncate_metadata(run, 4)


REFUSED = [
    # (id, change to the run, extra args, words)
    ("resume_and_overwrite", None, ["--resume", "--overwrite"], ["--resume", "--overwrite", "one of them"]),
    ("complete", None, ["--resume"], ["--resume", "is complete", "step 4 of 4", "train.steps"]),
    ("other_width", None, ["--resume", "--set", "model.hidden=[64]"], ["resume: model.hidden", "[64]", "[128]"]),
    ("other_model", None, ["--resume", "--set", 'model.name="cnn"'], ["resume: model.name", "cnn"]),
    ("other_optimizer", None, ["--resume", "--set", 'optimizer.name="adamw"'], ["resume: optimizer.name", "adamw", "sgd"]),
    ("other_data", None, ["--resume", "--set", 'data.name="synthetic"', "--set", "data.synthetic_classes=10", "--set", "train.steps=6"],
     ["resume:", "'1.weight'", "(128, 32)", "(128, 64)"]),
    ("every_checkpoint_damaged", every_damaged, ["--resume", "--set", "train.steps=6"], ["--resume", "every checkpoint", "damaged"]),
    ("no_checkpoints", lambda r: shutil.rmtree(r / "checkpoints"), ["--resume", "--set", "train.steps=6"], ["--resume", "no complete checkpoint"]),
    ("without_overwrite", None, [], ["--out", "already has files", "--overwrite"]),
]


@pytest.mark.parametrize("change,args,words", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_resume_refused(run, capsys, change, args, words):
    if change is not None:
        change(run)
    job = job_file(run.parent, JOB)
    refused(["train", str(job), "--out", str(run), *args], words, run.parent, capsys)


def test_resume_without_out(tmp_path, capsys):
    refused(["train", str(job_file(tmp_path, JOB)), "--resume"], ["--resume", "--out"], tmp_path, capsys)


@pytest.mark.parametrize("damage", [delete_shard, truncate_shard, truncate_metadata])
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact(run, capsys, damage):
    damage(run)
    job = job_file(run.parent, JOB)
    assert _train(job, run, "--resume", "--set", "train.steps=6") == 0
    err = capsys.readouterr().err
    assert "warning: checkpoint step-00000004 is damaged" in err and "continuing from step-00000002" in err, err
    records = (run / "metrics.jsonl").read_text()
    assert '"kind": "warning"' in records and '"kind": "resume", "step": 2' in records
    if damage is truncate_shard:  # and it ends where a run never interrupted ends
        assert _train(job, run.parent / "whole", "--set", "train.steps=6") == 0
        got, want = (torch.load(p / "model.pt", weights_only=True) for p in (run, run.parent / "whole"))
        assert all(torch.equal(got[k], want[k]) for k in want)

"""A NaN in the data: the job fails naming the step, skips it, or rolls back and stops after n repeats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shoal.cli import main
from shoal.data import BatchPlan


@pytest.fixture
def poisoned(tmp_path: Path) -> tuple[Path, int]:
    """120 samples, one of them NaN; returns the job and the (1-based) step whose batch holds it."""
    g = np.random.default_rng(0)
    x = g.standard_normal((120, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    x[37, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=y, x_eval=x[:20] * 0 + 1, y_eval=y[:20])
    job = tmp_path / "job.toml"
    job.write_text(f'seed = 1\n[data]\nname = "npz"\npath = "{tmp_path / "d.npz"}"\n[train]\nglobal_batch_size = 20\nepochs = 1\nlog_every = 1\n')
    plan = BatchPlan(120, 20, 1, seed=1)
    bad_step = next(s for s in range(plan.steps_per_epoch()) if 37 in plan.step(0, s)[0]) + 1
    return job, bad_step


def run(job: Path, out: Path, *sets: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(["train", str(job), "--nproc", "1", "--out", str(out), *[a for s in sets for a in ("--set", s)]])
    return done.value.code


def records(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_fail_names_the_step(poisoned, tmp_path, capsys):
    job, bad = poisoned
    assert run(job, tmp_path / "r") == 2
    assert f"non-finite gradient (NaN or inf) at step {bad}" in capsys.readouterr().err


def test_skip_drops_only_that_update(poisoned, tmp_path):
    job, bad = poisoned
    out = tmp_path / "r"
    assert run(job, out, "train.on_nonfinite='skip'") == 0
    assert [r["step"] for r in records(out, "nonfinite")] == [bad]
    assert all(np.isfinite(r["loss"]) for r in records(out, "train"))
    assert (out / "model.pt").is_file()


def test_rollback_stops_after_the_allowed_repeats(poisoned, tmp_path, capsys):
    job, bad = poisoned
    out = tmp_path / "r"
    code = run(job, out, "train.on_nonfinite='rollback'", "train.max_nonfinite=2", "checkpoint.every=1")
    assert code == 2
    assert "stopped after train.max_nonfinite = 2" in capsys.readouterr().err
    assert [r["step"] for r in records(out, "nonfinite")] == [bad] * 3  # the same data brings the same NaN back
    assert [r["step"] for r in records(out, "resume")] == [bad - 1] * 2

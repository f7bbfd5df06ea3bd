"""The run directory keeps one run's history: restarts and resumes continue it, --overwrite starts from nothing,
a failed resume changes nothing, one job at a time holds it, and an API run records what it trained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import shoal
from job_files import digits_mlp
from shoal.checkpoint import Checkpointer, latest_checkpoint, read_marker
from shoal.cli import main
from shoal.errors import ShoalError
from shoal.export import export_checkpoint

SMALL = {"train": {"global_batch_size": 20, "steps": 6, "log_every": 1}, "checkpoint": {"every": 4, "at_end": False}}


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 12, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 2))


def fit_small(out: Path, **kw):
    return shoal.fit(net(), data(), None, SMALL, out=out, summary=False, show_progress=False, **kw)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_restart_with_overwrite_keeps_the_history(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 99}\n')  # another run's: --overwrite drops it
    fit_small(out, overwrite=True)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the agent restarted the workers with the same arguments
    fit_small(out, overwrite=True)
    got = records(out)
    assert got[0]["kind"] == "train" and got[0]["step"] == 1, got[0]
    assert [r["step"] for r in got if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in got if r["kind"] == "resume"] == [4]


def test_resume_together_with_overwrite_is_refused(tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text(digits_mlp("both", "[train]\nsteps = 2\n"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(job), "--out", str(tmp_path / "run"), "--resume", "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "--resume" in err and "--overwrite" in err
    with pytest.raises(ShoalError, match="overwrite=True"):
        fit_small(tmp_path / "api", resume=True, overwrite=True)


def test_checkpoints_of_another_run_are_not_resumed(tmp_path):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = Checkpointer(tmp_path, rank=0, world=1, run_id="run-a").save(3, [model], opt, sched, {})
    assert read_marker(path)["run_id"] == "run-a"
    assert latest_checkpoint(tmp_path, run_id="run-a") == path
    assert latest_checkpoint(tmp_path, run_id="run-b") is None
    assert latest_checkpoint(tmp_path) == path  # no run named: any complete checkpoint


JOB_RESUMABLE = "[train]\nglobal_batch_size = 50\nsteps = 4\nlog_every = 2\n[checkpoint]\nevery = 2\n"


def test_a_resume_with_another_model_is_refused_and_leaves_the_run_alone(tmp_path, capsys):
    job, out = tmp_path / "job.toml", tmp_path / "run"
    job.write_text(digits_mlp("three", JOB_RESUMABLE))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(job), "--out", str(out), "--nproc", "1"])
    assert exit_info.value.code == 0
    capsys.readouterr()
    before = snapshot(out)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(job), "--out", str(out), "--resume", "--set", "model.hidden=[32]", "--set", "train.steps=6"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "model.hidden" in err and "[16]" in err and "[32]" in err, err
    assert snapshot(out) == before, "a refused resume must not touch the run directory"
    export_checkpoint(out, tmp_path / "model.pt")  # the good run still exports


def test_the_run_directory_appears_only_at_the_first_write(tmp_path):
    from shoal.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    assert not (tmp_path / "run").exists()
    run.log({"kind": "train", "step": 1})
    run.close()
    assert records(tmp_path / "run")[0]["step"] == 1


HOLD = """
import sys, time
from pathlib import Path
from shoal.run_lock import acquire
acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    from shoal.run_lock import LOCK_NAME, acquire

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ShoalError, match=f"pid {holder.pid}") as refused:
            acquire(out)
        assert str(out) in str(refused.value) and "\n" not in str(refused.value)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert (out / LOCK_NAME).exists(), "a killed holder leaves its lock file behind"
    lock = acquire(out)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == __import__("os").getpid()
    lock.release()


def test_the_lock_file_is_not_a_file_of_the_run_and_survives_overwrite(tmp_path):
    from shoal.run_dir import RunDir, check_writable
    from shoal.run_lock import LOCK_NAME, acquire

    out = tmp_path / "run"
    lock = acquire(out)
    check_writable(out, overwrite=False)  # only the lock there: nothing to overwrite
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 9}\n')
    (out / "checkpoints" / "step-00000009").mkdir(parents=True)
    held = (out / LOCK_NAME).stat().st_ino
    run = RunDir(out, overwrite=True, run_id="new")
    run.log({"kind": "train", "step": 1})
    run.close()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "metrics.jsonl", "run.json"]
    assert (out / LOCK_NAME).stat().st_ino == held, "cleaning must leave the held lock file in place"
    assert [r["step"] for r in records(out)] == [1]
    lock.release()
    assert not (out / LOCK_NAME).exists()


def test_export_of_an_api_run_needs_only_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = shoal.fit(net(), data(), data(), {"train": {"global_batch_size": 20, "steps": 4}}, out=out,
                       summary=False, show_progress=False)
    info = json.loads((out / "run.json").read_text())
    assert info["model"] == "torch.nn.modules.container.Sequential", info
    assert info["data"]["train"] == "torch.utils.data.dataset.TensorDataset", info
    assert (out / "config.toml").read_text().startswith("#")
    exported = export_checkpoint(out, tmp_path / "exported.pt")
    fresh = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 2))
    fresh.load_state_dict(torch.load(exported, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), fresh.state_dict().values()))

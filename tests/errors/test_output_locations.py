"""Category: where output goes. A path under a file, a read-only place, a directory where a file belongs, and a
full disk: one line naming the path (and, for the disk, 'no space left'), no temporary file left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from error_contract import BASE, job_file, refused, tree
from shoal import report
from shoal.cli import main

CKPT = BASE.replace("steps = 1", "steps = 4") + "[checkpoint]\nevery = 2\n"


def mount_tmpfs(where: Path, *options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield lambda where, *options: (mount_tmpfs(where, *options), made.append(where))
    for where in reversed(made):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name or p.name.startswith(".shoal-probe")]


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    job = job_file(tmp_path, BASE)
    refused(["train", str(job), "--out", str(tmp_path / "plain" / "run")], ["--out", "plain", "is a file"], tmp_path, capsys)


def test_out_deep_under_a_file(tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    job = job_file(tmp_path, BASE)
    refused(["train", str(job), "--out", str(tmp_path / "plain" / "a" / "b")], ["--out", "is a file"], tmp_path, capsys)


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    job = job_file(tmp_path, BASE)
    refused(["train", str(job), "--out", str(tmp_path / "plain")], ["--out", "not a directory"], tmp_path, capsys)


@pytest.mark.parametrize("sub", ["run", "a/b/run"])
def test_out_on_a_read_only_filesystem(tmp_path, capsys, mounts, sub):
    mounts(tmp_path / "ro", "ro,size=1m")
    job = job_file(tmp_path, BASE)
    refused(["train", str(job), "--out", str(tmp_path / "ro" / sub)], ["--out", "read-only", str(tmp_path / "ro")], tmp_path, capsys)


def test_export_to_an_existing_directory(tmp_path, capsys):
    (tmp_path / "there").mkdir()
    refused(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "there")], ["--out", "is a directory", "model.pt"], tmp_path, capsys)


def test_export_under_a_file(tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    refused(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "plain" / "m.pt")], ["--out", "plain", "is a file"], tmp_path, capsys)


@pytest.mark.parametrize("target", ["k8s", "slurm"])
def test_deploy_to_an_existing_directory(tmp_path, capsys, target):
    (tmp_path / "there").mkdir()
    job = job_file(tmp_path, BASE)
    refused(["deploy", target, str(job), "--out", str(tmp_path / "there")], ["--out", "is a directory"], tmp_path, capsys)


def test_deploy_on_a_read_only_filesystem(tmp_path, capsys, mounts):
    mounts(tmp_path / "ro", "ro,size=1m")
    job = job_file(tmp_path, BASE)
    refused(["deploy", "slurm", str(job), "--out", str(tmp_path / "ro" / "j.sbatch")], ["--out", "read-only"], tmp_path, capsys)


def _train(job: Path, out: Path, *args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(["train", str(job), "--out", str(out), *args])
    return done.value.code


def test_full_disk_mid_run_leaves_no_temporary_files_and_resumes_bit_identical(tmp_path, capsys, mounts):
    """The first checkpoint fits, the second does not: one line, nothing half-written; with space freed, --resume
    ends where a run never interrupted ends."""
    disk = tmp_path / "disk"
    mounts(disk, "size=200k")
    job = job_file(tmp_path, CKPT)
    assert _train(job, disk / "run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left" in err and str(disk) in err, err
    assert leftovers(disk) == []
    assert [p.name for p in (disk / "run" / "checkpoints").iterdir()] == ["step-00000002"]
    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
    assert _train(job, disk / "run", "--resume") == 0
    assert _train(job, tmp_path / "whole") == 0
    resumed, whole = (torch.load(p / "model.pt", weights_only=True) for p in (disk / "run", tmp_path / "whole"))
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert leftovers(disk) == []


def test_full_disk_before_the_first_write(tmp_path, capsys, mounts):
    disk = tmp_path / "disk"
    mounts(disk, "size=64k")
    subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k", "count=64"], capture_output=True)  # fills it
    job = job_file(tmp_path, BASE)
    assert _train(job, disk / "run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left" in err, err
    assert leftovers(disk) == []


def test_leftover_temporary_files_go_at_the_next_start(tmp_path):
    job = job_file(tmp_path, CKPT)
    run = tmp_path / "run"
    assert _train(job, run) == 0
    (run / ".model.pt.tmp-999").write_bytes(b"half")
    (run / ".metrics.jsonl.tmp-998").write_bytes(b"half")
    (run / "checkpoints" / ".tmp-step-00000006").mkdir()
    before = {k: v for k, v in tree(run).items() if k.startswith("checkpoints/step-")}
    assert _train(job, run, "--resume", "--set", "train.steps=6") == 0
    assert leftovers(run) == []
    assert (run / "checkpoints" / "step-00000006").is_dir() and before


def test_full_disk_at_the_report_keeps_the_model_and_checkpoints(tmp_path, capsys, mounts, monkeypatch):
    """The disk fills (another program, say) just before report.html, the last write of a run: one line that says
    the model and checkpoints are saved and how to write the page later; no temporary file."""
    disk = tmp_path / "disk"
    mounts(disk, "size=4m")
    real_render = report.render

    def render_then_fill(runs):
        page = real_render(runs)
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=64k"], capture_output=True)  # to the last block
        return page

    monkeypatch.setattr(report, "render", render_then_fill)
    job = job_file(tmp_path, CKPT)
    assert _train(job, disk / "run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in ("no space left", str(disk / "run"), "report.html", "model.pt", "checkpoints are saved", f"shoal report {disk / 'run'}"):
        assert word in err, (word, err)
    assert leftovers(disk) == [] and not (disk / "run" / "report.html").exists()
    assert sorted(p.name for p in (disk / "run" / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert set(torch.load(disk / "run" / "model.pt", weights_only=True))  # whole and loadable
    monkeypatch.undo()
    (disk / "filler").unlink()
    assert _report(disk / "run") == 0 and (disk / "run" / "report.html").stat().st_size > 0


def _report(run: Path) -> int:
    with pytest.raises(SystemExit) as done:
        main(["report", str(run)])
    return done.value.code

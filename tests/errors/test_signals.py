"""Category: signals. Ctrl-C (SIGINT) and SIGTERM end `shoal train` with one line saying where the run got to and
how to continue it, exit 130 / 143; a launcher killed by SIGKILL takes its workers with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from error_contract import job_file

LONG = ('name = "t"\n[data]\nname = "digits"\n[train]\nglobal_batch_size = 32\nsteps = 1000000\nlog_every = 1\n'
        "[checkpoint]\nevery = 2\n[health]\nheartbeat_s = 0\n")


def start(tmp_path: Path, nproc: int) -> tuple[subprocess.Popen, Path]:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "shoal", "train", str(job_file(tmp_path, LONG)), "--out", str(run), "--nproc", str(nproc)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    for _ in range(2400):  # until its first checkpoint is recorded (a bound on a wait, not a timed assert)
        if metrics.is_file() and '"kind": "checkpoint"' in metrics.read_text():
            return proc, run
        if proc.poll() is not None:
            pytest.fail(f"the job ended early: {proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the job wrote no checkpoint")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    found = children(pid)
    return found + [d for child in found for d in descendants(child)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.dist
@pytest.mark.parametrize("sig,nproc,code", [(signal.SIGINT, 2, 130), (signal.SIGTERM, 1, 143)], ids=["sigint-2proc", "sigterm-1proc"])
def test_signal_gives_one_line_and_its_exit_code(tmp_path, sig, nproc, code):
    proc, run = start(tmp_path, nproc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted at step ") and f"continue with --resume --out {run}" in last, err
    assert not (run / ".lock").exists()  # the directory is free for the --resume


@pytest.mark.dist
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkilled_launcher_takes_its_workers_along(tmp_path):
    proc, _ = start(tmp_path, 2)
    workers = descendants(proc.pid)  # the fork server and the resource tracker, and the workers forked from the server
    assert len(workers) >= 4, workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10  # the kernel signals them at once; this only bounds the wait
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), [w for w in workers if alive(w)]

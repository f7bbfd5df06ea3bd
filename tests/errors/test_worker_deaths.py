"""Category: a worker dies of an exception that is not the user's mistake (a bug, a broken kernel, memory). The
last line names the rank, its host and the exception's own message; the full traceback is in RUN/logs/rank-N.log.
Exit code 1: not a mistake in the job file, so not 2."""

from __future__ import annotations

import socket
import sys
import textwrap

import pytest

from error_contract import BASE, job_file
from shoal.cli import main

BROKEN = textwrap.dedent("""
    import torch

    class Broken(torch.nn.Module):
        '''Fine in the dry run (no gradients), broken in training.'''
        def __init__(self, error):
            super().__init__()
            self.lin, self.error = torch.nn.Linear(64, 10), error
        def forward(self, x):
            if torch.is_grad_enabled():
                raise self.error
            return self.lin(x.flatten(1))

    def runtime():
        return Broken(RuntimeError("CUDA error: an illegal memory access was encountered\\nCompile with TORCH_USE_CUDA_DSA"))
    def memory():
        return Broken(MemoryError("cannot allocate 64 GiB"))
    def key():
        return Broken(KeyError("layer3"))
    def value():
        return Broken(ValueError("expected 4 dims"))
""")

CASES = [
    ("runtime", "RuntimeError: CUDA error: an illegal memory access was encountered"),
    ("memory", "MemoryError: cannot allocate 64 GiB"),
    ("key", "KeyError: 'layer3'"),
    ("value", "ValueError: expected 4 dims"),
]


@pytest.fixture
def broken(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    (tmp_path / "broken_models.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # spawned workers import it too
    yield tmp_path
    sys.modules.pop("broken_models", None)


def _check(line: str, rank: int, message: str, run) -> None:
    assert len(line.strip().splitlines()) == 1, line
    assert line.startswith(f"error: worker rank {rank} on {socket.gethostname()} failed: {message}"), line
    log = run / "logs" / f"rank-{rank}.log"
    assert str(log) in line and "Traceback (most recent call last)" in log.read_text()


@pytest.mark.parametrize("factory,message", CASES, ids=[c[0] for c in CASES])
def test_worker_exception_names_rank_host_and_message(broken, capsys, factory, message):
    job = job_file(broken, BASE + f'[model]\nname = "broken_models:{factory}"\n')
    with pytest.raises(SystemExit) as done:
        main(["train", str(job), "--out", str(broken / "run")])
    assert isinstance(done.value.code, str)  # printed by Python as the one line; exit status 1
    assert "Traceback" not in capsys.readouterr().err
    _check(done.value.code, 0, message, broken / "run")


@pytest.mark.dist
def test_spawned_worker_exception(broken, capsys):
    job = job_file(broken, BASE + '[model]\nname = "broken_models:value"\n')
    with pytest.raises(SystemExit) as done:
        main(["train", str(job), "--out", str(broken / "run"), "--nproc", "2"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip() == "", err
    rank = int(done.value.code.split("worker rank ")[1].split()[0])
    _check(done.value.code, rank, "ValueError: expected 4 dims", broken / "run")


@pytest.mark.dist
def test_a_worker_killed_by_a_signal_is_named_not_the_peer_that_lost_it(tmp_path, capsys, monkeypatch):
    """No restarts left: the last line names the rank SIGKILL took, although its peer's collective fails at about the
    same moment and the agent may record the peer's failure first."""
    monkeypatch.setenv("SHOAL_TEST_KILL", "1:3")
    job = job_file(tmp_path, BASE.replace("steps = 1", "steps = 8"))
    with pytest.raises(SystemExit) as done:
        main(["train", str(job), "--out", str(tmp_path / "run"), "--nproc", "2"])
    assert done.value.code == f"error: worker rank 1 on {socket.gethostname()} failed: killed by SIGKILL", done.value.code
    assert "Traceback" not in capsys.readouterr().err

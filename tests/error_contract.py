"""The error contract every tests/errors module checks: exit code 2, one stderr line naming the field or file,
no traceback, and the directory the job would write to (and every file it reads) unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shoal.cli import main


def tree(root: Path) -> dict[str, str]:
    """Every file and directory under root with a hash of its bytes (directories: their mode)."""
    found = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            found[rel] = "link"
        elif p.is_dir():
            found[rel] = f"dir {p.stat().st_mode:o}"
        else:
            found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def refused(argv: list[str], words: list[str], root: Path, capsys) -> str:
    """Run `shoal ARGV` in this process; it must refuse with one line containing every word and leave root as it was."""
    before = tree(root)
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as done:
        for name in ("run_job", "launch_local", "launch_nodes"):  # a job that is not refused must not start training here
            mp.setattr(f"shoal.job.command.{name}", _must_not_start)
        main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert done.value.code == 2, f"exit {done.value.code}: {err!r}"
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in captured.err + captured.out
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert tree(root) == before, "a refused job must leave every file as it was"
    return err


def _must_not_start(*args, **kwargs):
    raise AssertionError("the job was not refused: it started training")


def job_file(root: Path, text: str, name: str = "job.toml") -> Path:
    path = Path(root) / name
    path.write_text(text)
    return path


BASE = 'name = "t"\n[data]\nname = "digits"\n[train]\nglobal_batch_size = 32\nsteps = 1\n'

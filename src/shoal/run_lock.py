"""One job per run directory: an `fcntl.flock` on RUN/.shoal.lock.

The kernel drops a flock when its holder dies, so a crashed job never leaves the directory
stuck; the file names the holder (pid, host, run id) for the refusal message, and what a
crashed holder left there lets its restarted rank 0 find its run id again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from shoal.errors import ShoalError, check_location, writing

LOCK_NAME = ".shoal.lock"
# Set by a `shoal train` launcher to the lock file it holds (or that node rank 0's launcher holds):
# its workers inherit the environment and must not lock the directory again.
HELD_ENV = "SHOAL_RUN_LOCK_HELD"

_held: dict[str, RunLock] = {}  # locks this process holds, by lock file


def lock_path(run_dir: str | Path) -> Path:
    return Path(os.path.abspath(run_dir)) / LOCK_NAME


def held_by_launcher(run_dir: str | Path) -> bool:
    return os.environ.get(HELD_ENV) == str(lock_path(run_dir))


def read_lock(run_dir: str | Path) -> dict:
    """What the lock file says about its (last) holder; {} when absent or unreadable."""
    try:
        return json.loads(lock_path(run_dir).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


class RunLock:
    """Held until `release()` or the end of the process. `previous` is what the file held before (a crashed holder's)."""

    def __init__(self, path: Path, fd: int, made_dir: bool, previous: dict):
        self.path, self.fd, self.made_dir, self.previous = path, fd, made_dir, previous
        self.record()

    def record(self, run_id: str | None = None) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id,
                "elastic_run": os.environ.get("TORCHELASTIC_RUN_ID"), "since": time.time()}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(info).encode(), 0)

    def release(self) -> None:
        """Remove the file while still holding it (a waiter then sees it gone), and a directory made only for it."""
        if self.fd is None:
            return
        _held.pop(str(self.path), None)
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        if self.made_dir:
            try:
                self.path.parent.rmdir()  # only if empty: a failed start leaves nothing behind
            except OSError:
                pass


def acquire(run_dir: str | Path) -> RunLock:
    """Lock RUN or refuse at once, naming the holder. A lock this process already holds (a `fit` that raised
    left it) is taken again."""
    path = lock_path(run_dir)
    if str(path) in _held:
        _held[str(path)].release()
    made_dir = not path.parent.exists()
    if made_dir or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        check_location(path.parent)  # a file in the way, a read-only place: one line, before anything is made
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ShoalError(f"--out: run directory '{run_dir}' is in use by {_holder(read_lock(run_dir))}; "
                             "wait for that job to end or choose another --out") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # else the holder released and removed it between our open and our lock: try again
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        previous = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except json.JSONDecodeError:
        previous = {}
    try:
        with writing(path.parent, "the run directory's lock file"):  # a full disk: one line
            lock = _held[str(path)] = RunLock(path, fd, made_dir, previous)
    except BaseException:
        path.unlink(missing_ok=True)
        os.close(fd)
        if made_dir:
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        raise
    return lock


def _holder(info: dict) -> str:
    if "pid" not in info:
        return "another process (it has not written its pid yet)"
    return f"pid {info['pid']} on {info.get('host', 'an unknown host')}"

"""The run directory: resolved config, metrics.jsonl, model.pt. Files appear whole or not at all."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import torch

from shoal.errors import ShoalError


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one unless the user says so."""
    if path.exists() and not path.is_dir():
        raise ShoalError(f"--out: '{path}' exists and is not a directory; choose another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ShoalError(f"--out: run directory '{path}' already has files; pass --overwrite or choose another --out")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RunDir:
    """Written by rank 0 only."""

    def __init__(self, path: Path, overwrite: bool = False, continuing: bool = False):
        if not continuing:  # a resumed or restarted run goes on in its own directory
            check_writable(path, overwrite)
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for stale in ("metrics.jsonl", "model.pt"):
                (path / stale).unlink(missing_ok=True)
        self._metrics = open(path / "metrics.jsonl", "a", buffering=1)

    def write_config(self, toml_text: str) -> None:
        atomic_write_bytes(self.path / "config.toml", toml_text.encode())

    def trim_after(self, step: int) -> None:
        """On resume, drop the training records of steps the checkpoint does not contain: they are about to
        be redone. Events (restarts, non-finite steps, stragglers) stay: they happened."""
        self._metrics.close()
        path = self.path / "metrics.jsonl"
        redone = lambda r: r.get("kind") in ("train", "eval", "checkpoint") and r.get("step", 0) > step  # noqa: E731
        kept = [line for line in path.read_text().splitlines() if not redone(json.loads(line))]
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
        self._metrics = open(path, "a", buffering=1)

    def log(self, record: dict) -> None:
        self._metrics.write(json.dumps({**record, "unix_time": round(time.time(), 3)}) + "\n")

    def save_model(self, state_dict: dict) -> Path:
        target = self.path / "model.pt"
        tmp = target.with_name(f".model.pt.tmp-{os.getpid()}")
        torch.save(state_dict, tmp)
        os.replace(tmp, target)
        return target

    def close(self) -> None:
        self._metrics.close()

"""The run directory: run.json (which run), resolved config, metrics.jsonl, model.pt. Files appear whole or not at all.

A directory holds one run: restarts and `--resume` continue it under the run id in run.json,
`--overwrite` starts a new one from nothing. Nothing in it changes until the job's first real
write, so a job refused or failing before that (a resume of another model) leaves it as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import torch

from shoal.config import ModelConfig, OptimizerConfig, load_toml
from shoal.errors import ShoalError, check_location, writing
from shoal.run_lock import LOCK_NAME, RunLock

RUN_INFO = "run.json"


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one unless the user says so."""
    check_location(path)
    if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()) and not overwrite:
        raise ShoalError(f"--out: run directory '{path}' already has files; pass --overwrite or choose another --out")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path.parent, path.name, tmp):
        tmp.write_bytes(data)
        os.replace(tmp, path)


def remove_leftovers(path: Path) -> None:
    """What a write that was killed left: `.NAME.tmp-PID` files here, `.tmp-step-*` folders in checkpoints/."""
    for tmp in [*path.glob(".*.tmp-*"), *(path / "checkpoints").glob(".tmp-step-*")]:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def new_run_id() -> str:
    return f"{dt.datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


def read_run_info(path: Path) -> dict:
    """run.json of a run directory ({} for a directory without one: empty, or written before run ids)."""
    try:
        return json.loads((Path(path) / RUN_INFO).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _clear(path: Path) -> None:
    """--overwrite: the old run goes, checkpoints included; the lock file stays (this job holds it)."""
    for entry in path.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class RunDir:
    """Written by rank 0 only, from its first write on (a log record, a trim after a resume loaded, a checkpoint).

    `origin` goes into run.json: {"origin": "job"}, or what `shoal.fit` was given (model and data classes).
    `lock`, when rank 0 holds the directory's lock itself, is released by `close()`.
    """

    def __init__(self, path: Path, overwrite: bool = False, continuing: bool = False, run_id: str | None = None,
                 origin: dict | None = None, lock: RunLock | None = None):
        if not continuing:  # a resumed or restarted run goes on in its own directory
            check_writable(path, overwrite)
        self.path, self.overwrite, self.run_id, self.lock = path, overwrite, run_id or new_run_id(), lock
        self.origin = origin or {"origin": "job"}
        self._config: str | None = None
        self._metrics = None
        self._trim_at_open: int | None = None

    def open(self) -> None:
        """The first write: clean (--overwrite of another run), record the run, open the metrics. Idempotent."""
        if self._metrics is not None:
            return
        with writing(self.path, "the run directory"):
            self.path.mkdir(parents=True, exist_ok=True)
        stored = read_run_info(self.path).get("run_id")
        if self.overwrite and stored != self.run_id:  # a restart of this run keeps its history
            _clear(self.path)
        remove_leftovers(self.path)
        if stored != self.run_id:
            info = {"run_id": self.run_id, **self.origin, "created": time.time()}
            atomic_write_bytes(self.path / RUN_INFO, (json.dumps(info, indent=1) + "\n").encode())
        if self._config is not None:
            atomic_write_bytes(self.path / "config.toml", self._config.encode())
        with writing(self.path, "metrics.jsonl"):
            self._metrics = open(self.path / "metrics.jsonl", "a", buffering=1)
        if self._trim_at_open is not None:
            self.trim_after(self._trim_at_open)

    def write_config(self, toml_text: str) -> None:
        """Written at the first write (now, if that happened); an API run's says where model and data came from."""
        if self.origin.get("origin") == "api":
            toml_text = (f"# model and data came from shoal.fit(): model {self.origin['model']}, data "
                         f"{', '.join(f'{k} {v}' for k, v in self.origin['data'].items())}; the [model] and [data] "
                         "sections below were not used (see run.json)\n" + toml_text)
        self._config = toml_text
        if self._metrics is not None:
            atomic_write_bytes(self.path / "config.toml", toml_text.encode())

    def redo_from_start(self) -> None:
        """A restart with no checkpoint of this run: its training records are about to be redone (dropped at open)."""
        self._trim_at_open = 0

    def trim_after(self, step: int) -> None:
        """On resume, drop the training records of steps the checkpoint does not contain: they are about to
        be redone. Events (restarts, non-finite steps, stragglers) stay: they happened."""
        self.open()
        self._trim_at_open = None
        self._metrics.close()
        path = self.path / "metrics.jsonl"
        redone = lambda r: r.get("kind") in ("train", "eval", "checkpoint") and r.get("step", 0) > step  # noqa: E731
        kept = [line for line in path.read_text().splitlines() if not redone(json.loads(line))]
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
        self._metrics = open(path, "a", buffering=1)

    def log(self, record: dict) -> None:
        self.open()
        with writing(self.path, "metrics.jsonl"):
            self._metrics.write(json.dumps({**record, "unix_time": round(time.time(), 3)}) + "\n")

    def save_model(self, state_dict: dict) -> Path:
        self.open()
        target = self.path / "model.pt"
        tmp = target.with_name(f".model.pt.tmp-{os.getpid()}")
        with writing(self.path, "model.pt", tmp):
            torch.save(state_dict, tmp)
            os.replace(tmp, target)
        return target

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self.lock is not None:
            self.lock.release()


def check_same_model(path: Path, model: dict, optimizer: str, origin: dict | None = None) -> None:
    """Before a resume loads anything: a checkpoint fits only the model that wrote it. Compares the job's [model]
    (a `model_dump(mode="json")`) and optimizer name with the run's config.toml, or an API run's model class."""
    stored_file = Path(path) / "config.toml"
    if not stored_file.is_file():
        return  # a run from before config.toml: nothing to compare with
    stored, info, origin = load_toml(stored_file), read_run_info(path), origin or {"origin": "job"}
    if "api" in (origin.get("origin"), info.get("origin")):
        pairs = [("model class", info.get("model", "the job file's model"), origin.get("model", "the job file's model"))]
    else:
        old = stored.get("model", {})
        try:
            old = ModelConfig.model_validate(old).model_dump(mode="json")  # defaults filled in as the new side has them
        except ValueError:
            pass
        pairs = [(f"model.{k}", old.get(k, "(absent)"), v) for k, v in model.items()]
    pairs.append(("optimizer.name", stored.get("optimizer", {}).get("name", OptimizerConfig().name), optimizer))
    for key, was, now in pairs:
        if was != now:
            raise ShoalError(f"resume: {key} is {json.dumps(now)} in this job but {json.dumps(was)} in the run in '{path}' "
                             f"({stored_file.name}); resume with the run's settings, or train into another directory")

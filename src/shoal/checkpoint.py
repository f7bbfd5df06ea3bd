"""Sharded, atomic, resharding checkpoints on torch.distributed.checkpoint (DCP).

A checkpoint is a directory `checkpoints/step-00000123/`: DCP's shard files and `.metadata`,
plus `shoal.json` (step, world, layout, run id). Besides model, optimizer, schedule, step and RNG
it holds any number of named stateful parts (a compressor's error feedback, a sync strategy's
clocks, an outer optimizer): each rank's `state_dict()` of each part, restored on the same
world size. Every rank writes its shards into
`.tmp-step-00000123/`; only after all ranks finished does rank 0 rename it into place, so a
crash mid-write never leaves a directory that looks complete (`save_alone`: one rank writes and commits
a whole checkpoint by itself, or the ranks of one group without the others: ps.rejoin's servers). Model and optimizer go through
DCP's state-dict API, keyed by the unwrapped model's names, so a checkpoint written under one
layout (DDP, FSDP, TP, another world size) loads under another.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from shoal.errors import ShoalError, writing

STEP_DIR = re.compile(r"^step-(\d{8})$")
MARKER = "shoal.json"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoints, oldest first (a directory counts only once renamed into place with its marker)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: Path, run_id: str | None = None) -> Path | None:
    """The newest committed and intact checkpoint. With `run_id`, only that run's: a restart never continues
    another job's checkpoints left in the directory."""
    return newest_intact(root, run_id)[0]


def newest_intact(root: Path, run_id: str | None = None) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest intact checkpoint, the newer ones passed over as damaged with the reason)."""
    done = complete_checkpoints(root)
    if run_id is not None:
        done = [p for p in done if _marker_run_id(p) == run_id]
    skipped = []
    for path in reversed(done):
        problem = damage(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def damage(path: Path) -> str | None:
    """What is wrong with a committed checkpoint's files (None: intact): DCP's metadata readable, every shard it
    names present and long enough. A shard deleted or truncated, or the metadata cut short, is found here."""
    try:
        meta = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as err:
        return f"its metadata cannot be read ({type(err).__name__})"
    need: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        shard = path / name
        if not shard.is_file():
            return f"shard {name} is missing"
        if shard.stat().st_size < size:
            return f"shard {name} is truncated ({shard.stat().st_size} of {size} bytes)"
    return None


def saved_shapes(path: Path, prefix: str = "model.") -> dict[str, tuple[int, ...]]:
    """The global shape of every tensor under `prefix` in a checkpoint (keys without the prefix)."""
    meta = dcp.FileSystemReader(str(path)).read_metadata()
    return {k[len(prefix):]: tuple(v.size) for k, v in meta.state_dict_metadata.items() if k.startswith(prefix) and hasattr(v, "size")}


def _marker_run_id(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_text()).get("run_id")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def read_marker(path: Path) -> dict:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        raise ShoalError(f"checkpoint '{path}' is incomplete or not a Shoal checkpoint (no readable {MARKER})") from None


def _single_module(modules: list[nn.Module]) -> nn.Module:
    """DCP's state-dict API takes one module; several pipeline stages on a rank travel as one list."""
    return modules[0] if len(modules) == 1 else nn.ModuleList(modules)


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _part_key(name: str, rank: int) -> str:
    return f"part_{name}_rank{rank}"


def _pack(part: Stateful) -> io.BytesIO:
    """A part's state as one blob: DCP stores bytes as they are, whatever nesting or keys the state has."""
    buffer = io.BytesIO()
    torch.save(part.state_dict(), buffer)
    buffer.seek(0)
    return buffer


def _unpack(part: Stateful, buffer: io.BytesIO) -> None:
    buffer.seek(0)
    part.load_state_dict(torch.load(buffer, weights_only=False))  # written by this rank of this run (numpy RNG inside)


def saved_keys(path: Path) -> set[str]:
    return set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def has_part(path: Path, name: str, rank: int) -> bool:
    """Whether a checkpoint holds rank `rank`'s state of the part `name`."""
    return _part_key(name, rank) in saved_keys(path)


def check_shared(directory: Path, is_writer: bool, group: dist.ProcessGroup | None = None) -> None:
    """Collective: every rank must see what the writer (the checkpointer's rank 0) writes into `directory`. A
    directory on each node's own disk would otherwise commit a checkpoint without the other nodes' shards."""
    probe = directory / ".shared-probe"
    token = [uuid.uuid4().hex if is_writer else None]
    if is_writer:
        probe.write_text(token[0])
    source = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast_object_list(token, src=source, group=group)
    try:
        seen = probe.read_text() == token[0]
    except OSError:
        seen = False
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, (seen, socket.gethostname()), group=group)
    if is_writer:
        probe.unlink(missing_ok=True)
    blind = [(i, host) for i, (ok, host) in enumerate(everyone) if not ok]
    if blind:
        who = ", ".join(f"rank {i} on {host}" for i, host in blind)
        raise ShoalError(f"checkpoint directory {directory.parent} is not shared between the nodes: {who} cannot see what rank 0 "
                         f"writes there, so a checkpoint would lack their shards; put --out (or the checkpoint directory) on a file "
                         f"system every node mounts (NFS, a Kubernetes PersistentVolumeClaim)")


@dataclass
class TrainState:
    """What besides weights a run needs to continue exactly: the step (which fixes the data position)."""

    step: int = 0
    parts: list[str] = field(default_factory=list)  # named parts restored (none on another world size)


class Checkpointer:
    """With `async_save`, shards are copied to memory and written by a background thread while training
    goes on; the commit happens at the next save or `wait()`. Its collectives then need a process group
    of their own (`group`), so they never interleave with training's."""

    def __init__(self, root: Path, rank: int, world: int, keep: int = 2, group: dist.ProcessGroup | None = None,
                 async_save: bool = False, run_id: str | None = None):
        self.root, self.rank, self.world, self.keep, self.group = root, rank, world, keep, group
        self.run_id = run_id  # recorded in every marker
        self.async_save = async_save
        self.pending: tuple[Future, Callable[[], None]] | None = None  # an async save and its commit
        self.shared_checked = False

    def _barrier(self) -> None:
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier(group=self.group)

    def _check_shared_once(self, tmp: Path, is_writer: bool, group: dist.ProcessGroup | None) -> None:
        """Collective, at the run's first save only: every writer sees the directory (check_shared); refused, the
        temporary directory goes."""
        if self.shared_checked:
            return
        try:
            check_shared(tmp, is_writer, group)
        except ShoalError:
            if is_writer:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.shared_checked = True

    def save(self, step: int, modules: list[nn.Module], optimizer: torch.optim.Optimizer, scheduler, meta: dict, fault=None,
             parts: dict[str, Stateful] | None = None) -> Path:
        """Collective: every rank writes its shards, then rank 0 commits the directory and prunes old ones."""
        self.wait()
        started = time.perf_counter()
        tmp, final = self.root / f".tmp-step-{step:08d}", step_dir(self.root, step)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        if dist.is_initialized() and dist.get_world_size(self.group) > 1:
            self._check_shared_once(tmp, self.rank == 0, self.group)
        model_sd, optim_sd = get_state_dict(_single_module(modules), optimizer)
        state = {"model": model_sd, "optim": optim_sd, "scheduler": scheduler.state_dict(), "train": {"step": step},
                 f"rng_rank{self.rank}": rng_state()}
        state.update({_part_key(name, self.rank): _pack(part) for name, part in (parts or {}).items()})
        commit = functools.partial(self._commit, step, tmp, final, meta, started, fault)
        with writing(self.root, f"checkpoint step {step}", tmp if self.rank == 0 else None):  # a full disk: one line, no .tmp-step left
            if self.async_save:
                self.pending = (dcp.async_save(state, checkpoint_id=str(tmp), process_group=self.group), commit)
            else:
                dcp.save(state, checkpoint_id=str(tmp), process_group=self.group)
                commit()
        return final

    def wait(self) -> None:
        """Commit the asynchronous save in flight, if any (collective)."""
        if self.pending is not None:
            (future, commit), self.pending = self.pending, None
            step, tmp = commit.args[0], commit.args[1]
            with writing(self.root, f"checkpoint step {step}", tmp if self.rank == 0 else None):
                future.result()
                commit()

    def _commit(self, step: int, tmp: Path, final: Path, meta: dict, started: float, fault) -> None:
        if fault is not None:
            fault(step)  # test hook: dies here, after the shards and before the commit
        self._barrier()
        if self.rank == 0:
            self._publish(step, tmp, final, meta, started)
        self._barrier()

    def _publish(self, step: int, tmp: Path, final: Path, meta: dict, started: float) -> None:
        """The marker, then the rename into place: only now does the checkpoint count; old ones beyond `keep` go."""
        info = {**meta, "run_id": self.run_id, "step": step, "world_size": self.world, "saved_at": time.time(),
                "save_s": time.perf_counter() - started}
        (tmp / MARKER).write_text(json.dumps(info, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def save_alone(self, step: int, modules: list[nn.Module], meta: dict, parts: dict[str, Stateful],
                   group: dist.ProcessGroup | None = None) -> Path:
        """Not a collective of the job: this rank alone writes and commits a whole checkpoint (ps.rejoin: the servers hold
        the run's state, and a worker that died must not stop them); with `group`, its members write one together (a
        collective among them only: ps.rejoin's several servers). The model's entries (for export and inference), the
        step and each writer's parts; the same temporary name, marker and rename as `save`."""
        started = time.perf_counter()
        tmp, final = self.root / f".tmp-step-{step:08d}", step_dir(self.root, step)
        first = group is None or dist.get_rank(group) == 0  # creates, publishes
        state = {"model": get_model_state_dict(_single_module(modules)), "train": {"step": step},
                 **{_part_key(name, self.rank): _pack(part) for name, part in parts.items()}}
        with writing(self.root, f"checkpoint step {step}", tmp if first else None):
            if first:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            if group is None:
                with warnings.catch_warnings():  # DCP warns that it saves "in a single process": that is the point
                    warnings.filterwarnings("ignore", message=".*single process.*")
                    dcp.save(state, checkpoint_id=str(tmp), no_dist=True)
            else:
                dist.barrier(group=group)
                self._check_shared_once(tmp, first, group)  # the writers' parts must all land in one directory
                dcp.save(state, checkpoint_id=str(tmp), process_group=group)
                dist.barrier(group=group)
            if first:
                self._publish(step, tmp, final, meta, started)
            if group is not None:
                dist.barrier(group=group)  # nobody goes on (or saves again) before the rename
        return final

    def load_alone(self, path: Path, parts: dict[str, Stateful]) -> TrainState:
        """Not a collective: this rank's parts of a checkpoint `save_alone` wrote (same world size: its caller checks)."""
        read_marker(path)
        missing = [name for name in parts if _part_key(name, self.rank) not in saved_keys(path)]
        if missing:
            raise ShoalError(f"checkpoint '{path}' has no {', '.join(missing)} state of rank {self.rank}: it was not written by "
                             "this job's layout; resume it with the settings that wrote it, or train into another directory")
        state: dict[str, Any] = {"train": {"step": 0}, **{_part_key(name, self.rank): io.BytesIO() for name in parts}}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process.*")
            dcp.load(state, checkpoint_id=str(path), no_dist=True)
        for name, part in parts.items():
            _unpack(part, state[_part_key(name, self.rank)])
        return TrainState(step=int(state["train"]["step"]), parts=sorted(parts))

    def load(self, path: Path, modules: list[nn.Module], optimizer: torch.optim.Optimizer, scheduler,
             parts: dict[str, Stateful] | None = None) -> TrainState:
        """Collective: reshards onto the current layout; RNG state and the named parts (per-rank state) come back
        only on the same world size."""
        self.wait()
        info = read_marker(path)
        module = _single_module(modules)
        model_sd, optim_sd = get_state_dict(module, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd, "scheduler": scheduler.state_dict(), "train": {"step": 0}}
        same_world = info.get("world_size") == self.world
        restored: dict[str, io.BytesIO] = {}
        if same_world:
            state[f"rng_rank{self.rank}"] = rng_state()
            present = saved_keys(path)
            restored = {name: io.BytesIO() for name in (parts or {}) if _part_key(name, self.rank) in present}
            state.update({_part_key(name, self.rank): buffer for name, buffer in restored.items()})
        dcp.load(state, checkpoint_id=str(path), process_group=self.group)
        set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        scheduler.load_state_dict(state["scheduler"])
        if same_world:
            set_rng_state(state[f"rng_rank{self.rank}"])
        for name in restored:
            _unpack(parts[name], state[_part_key(name, self.rank)])
        return TrainState(step=int(state["train"]["step"]), parts=sorted(restored))


def load_model_weights(path: Path, model: nn.Module) -> nn.Module:
    """Read only the model's weights from a checkpoint into a plain module (no process group needed)."""
    read_marker(path)
    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
    return model

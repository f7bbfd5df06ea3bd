"""How `fit` takes its run directory: one job holds it, one run id names it, every check comes before a write.

Rank 0 decides (lock, run id, the resume checks); the other ranks learn the outcome by broadcast,
so every rank raises the same one-line error, or none does.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from shoal.checkpoint import Checkpointer, newest_intact
from shoal.errors import ShoalError
from shoal.run_dir import RunDir, check_same_model, read_run_info
from shoal.run_lock import RunLock, acquire, held_by_launcher, read_lock


@dataclass
class RunStart:
    run_dir: RunDir | None  # rank 0 only
    checkpoints: Checkpointer | None
    resume_from: Path | None


class RunCheckpointer(Checkpointer):
    """Opens the run directory (rank 0) before the first shards land: --overwrite's clean comes before them."""

    run_dir: RunDir | None = None

    def save(self, *args, **kwargs) -> Path:
        if self.run_dir is not None:
            self.run_dir.open()
        return super().save(*args, **kwargs)


def describe_origin(model, train_set, eval_set) -> dict:
    """What run.json records of a `shoal.fit` call: no job file can rebuild its model or data."""
    name = lambda obj: f"{type(obj).__module__}.{type(obj).__qualname__}"  # noqa: E731
    data = {"train": name(train_set), **({"eval": name(eval_set)} if eval_set is not None else {})}
    return {"origin": "api", "model": name(model), "data": data}


def start_run(cfg, env, out, overwrite: bool, resume: bool, restarted: bool, run_id: str | None = None,
              origin: dict | None = None) -> RunStart:
    """`run_id`: the one a `shoal train` launcher chose; None lets rank 0 decide (torchrun, a script)."""
    if resume and overwrite:
        raise ShoalError("fit(): resume=True continues the run in `out`, overwrite=True replaces it; pass one of them")
    if out is None:
        if resume:
            raise ShoalError("resume: needs the run directory (--out) whose checkpoints to continue from")
        return RunStart(None, None, None)
    out, run_dir, decided = Path(out), None, None
    if env.is_main:
        try:
            run_dir, restarted = _claim(cfg, out, overwrite, resume, restarted, run_id, origin)
            decided = (run_dir.run_id, read_run_info(out).get("run_id") if resume else run_dir.run_id, None, restarted)
        except ShoalError as err:
            decided = (None, None, str(err), restarted)
    if env.world_size > 1:
        shared = [decided]
        dist.broadcast_object_list(shared, src=0)
        decided = shared[0]
    run_id, wanted, error, restarted = decided
    if error is not None:
        raise ShoalError(error)
    try:
        checkpoints, resume_from = _checkpoints(cfg, env, out, resume, restarted, run_id, wanted, run_dir)
    except BaseException:
        if run_dir is not None:
            run_dir.close()  # releases the lock rank 0 took; nothing was written
        raise
    return RunStart(run_dir, checkpoints, resume_from)


def _claim(cfg, out: Path, overwrite: bool, resume: bool, restarted: bool, run_id: str | None, origin) -> tuple[RunDir, bool]:
    """Rank 0: lock the directory (unless the launcher holds it), settle the run id, check a resume against the run.
    Also says whether this start continues the run: a restart, or an earlier rendezvous round of this same job wrote
    the directory (a node joined or came back: torch restarts every worker then, counting no restart)."""
    launcher = held_by_launcher(out)
    lock = None if launcher else acquire(out)
    try:
        if run_id is None and launcher:
            run_id = read_lock(out).get("run_id")  # node rank 0's launcher holds it for this job and named the run
        elif run_id is None and resume:
            run_id = read_run_info(out).get("run_id")
        elif run_id is None and restarted:
            run_id = _previous_attempt(lock) or read_run_info(out).get("run_id")
        if resume:
            check_same_model(out, cfg.model.model_dump(mode="json"), cfg.optimizer.name, origin)
        elif launcher and run_id is not None and read_run_info(out).get("run_id") == run_id:
            restarted = True
        run_dir = RunDir(out, overwrite, continuing=resume or restarted, run_id=run_id, origin=origin, lock=lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if lock is not None:
        lock.record(run_dir.run_id)
    return run_dir, restarted


def _previous_attempt(lock: RunLock | None) -> str | None:
    """Under torchrun a restarted rank 0 finds its run id in the lock file the killed attempt left."""
    previous = lock.previous if lock is not None else {}
    return previous.get("run_id") if previous.get("elastic_run") == os.environ.get("TORCHELASTIC_RUN_ID") else None


def nothing_to_resume(root: Path, skipped: list[tuple[Path, str]]) -> ShoalError:
    if skipped:
        return ShoalError(f"--resume: every checkpoint in '{root}' is damaged (the newest: {skipped[0][1]}); drop --resume to start afresh")
    return ShoalError(f"--resume: no complete checkpoint in '{root}'; drop --resume to start afresh")


def run_complete(out: Path, step: int, total: int) -> ShoalError:
    """`--resume` of a run already at its last step: the CLI's dry run and `shoal.fit` say it in the same words."""
    return ShoalError(f"--resume: the run in '{out}' is complete (step {step} of {total}); to train further raise train.steps "
                      "or train.epochs, or start another run")


def _same_everywhere(root: Path, latest: Path | None) -> None:
    """Collective: every rank continues from the same checkpoint, or none does (a directory that is not shared between
    the nodes shows each its own; ps.rejoin's server writes alone, with no shared-directory check at its saves)."""
    seen: list = [None] * dist.get_world_size()
    dist.all_gather_object(seen, latest.name if latest is not None else None)
    if len(set(seen)) > 1:
        who = ", ".join(f"rank {r}: {name or 'none'}" for r, name in enumerate(seen))
        raise ShoalError(f"the ranks see different newest checkpoints in '{root}' ({who}); put --out on a file system every "
                         "node shares (NFS, a Kubernetes PersistentVolumeClaim), or train into another directory")


def _checkpoints(cfg, env, out: Path, resume: bool, restarted: bool, run_id: str | None, wanted: str | None,
                 run_dir: RunDir | None) -> tuple[Checkpointer | None, Path | None]:
    """Checkpointing needs a run directory; resuming needs a complete checkpoint of this run in it."""
    c = cfg.checkpoint
    if not (c.every or c.at_end or resume or restarted):
        return None, None
    group = dist.new_group(backend="gloo") if c.async_save and env.world_size > 1 else None  # apart from training's collectives
    checkpoints = RunCheckpointer(out / "checkpoints", env.rank, env.world_size, c.keep, group, c.async_save, run_id=run_id)
    checkpoints.run_dir = run_dir
    latest, skipped = newest_intact(checkpoints.root, wanted) if resume or restarted else (None, [])
    if skipped and env.is_main:
        for path, problem in skipped:  # a damaged newest checkpoint: go on from the newest intact one, and say so
            note = f"checkpoint {path.name} is damaged ({problem}); " + (f"continuing from {latest.name}" if latest else "no intact one left")
            print(f"warning: {note}", file=sys.stderr)
            if run_dir is not None and latest is not None:
                run_dir.log({"kind": "warning", "message": note, "path": str(path)})
    if (resume or restarted) and env.world_size > 1:
        _same_everywhere(checkpoints.root, latest)
    if resume and latest is None and not restarted:
        raise nothing_to_resume(checkpoints.root, skipped)
    if restarted and latest is None and run_dir is not None:
        run_dir.redo_from_start()
    return checkpoints, latest

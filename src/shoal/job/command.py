"""`shoal train`: check everything a user can get wrong, then spawn the workers (or be one, under torchrun)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from shoal.checkpoint import latest_checkpoint
from shoal.config import load_job
from shoal.data import DataSpec, describe
from shoal.distributed.env import launched_by_elastic
from shoal.distributed.mesh import ParallelDims, check_layout
from shoal.errors import Interrupted, ShoalError, Signalled
from shoal.job.checks import check_node_counts, check_parts
from shoal.job.dryrun import check_resume, dry_run
from shoal.job.worker import failure_summary, run_job, worker_main
from shoal.launch.local import WorkerFailed, launch_local, launch_nodes
from shoal.launch.nodes import NodeSpec
from shoal.run_dir import check_same_model, check_writable, default_run_dir, new_run_id, read_run_info
from shoal.run_lock import HELD_ENV, acquire, lock_path


def preflight(cfg, nodes: NodeSpec | None = None) -> tuple[DataSpec, ParallelDims]:
    """Fail before any process starts, with the field to fix (the run directory's checks: `holding`)."""
    check_parts(cfg)  # an unknown sync strategy, compressor or monitor names the choices before any worker starts
    spec = describe(cfg.data, cfg.seed)
    counts = (nodes.min_nodes, nodes.max_nodes) if nodes else (1, 1)
    check_node_counts(cfg, spec.n_train, cfg.nproc, *counts)
    dims = check_layout(cfg.parallel, cfg.nproc * counts[0])
    dry_run(cfg, spec, dims)  # the model on shapes only, before any file is written
    return spec, dims


@contextlib.contextmanager
def holding(cfg, out: Path, overwrite: bool, resume: bool, nodes: NodeSpec | None,
            checked: tuple[DataSpec, ParallelDims] | None = None) -> Iterator[str | None]:
    """Hold the run directory for the whole job, so a second job is refused before any worker starts, and check it
    under the lock. Yields the run id every worker and every restart gets (None on a node other than rank 0: the
    job's rank 0 reads it from the lock file). With --nnodes only node rank 0 locks; the workers of every node
    learn from HELD_ENV that their launcher's job holds it."""
    host = nodes is None or nodes.is_host  # the other nodes start while the host may already be writing
    lock = acquire(out) if host else None
    before = os.environ.get(HELD_ENV)
    try:
        run_id = None
        if host:
            check_writable(out, overwrite or resume)
            if resume:
                check_same_model(out, cfg.model.model_dump(mode="json"), cfg.optimizer.name)
                if checked is not None:
                    check_resume(cfg, *checked, out)  # the checkpoint fits this model; the run is not complete yet
            run_id = (read_run_info(out).get("run_id") if resume else None) or new_run_id()
            lock.record(run_id)
        os.environ[HELD_ENV] = str(lock_path(out))
        yield run_id
    finally:
        if before is None:
            os.environ.pop(HELD_ENV, None)
        else:
            os.environ[HELD_ENV] = before
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def interruptible(out: Path) -> Iterator[None]:
    """Ctrl-C or SIGTERM while `shoal train` runs: the lock and run directory are let go as after an error, then one
    line says where the run got to (exit 130 / 143). Under the elastic agent its own handler raises SignalException
    after it stopped the workers."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        raise Signalled(signum)

    main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    except Signalled as err:
        raise Interrupted(interrupted_at(out), err.signum) from None
    except SignalException as err:
        raise Interrupted(interrupted_at(out), int(err.sigval)) from None
    except KeyboardInterrupt:
        raise Interrupted(interrupted_at(out), signal.SIGINT) from None
    except BaseException:
        if received:  # the signal surfaced wrapped (DCP gathers every rank's exception into a CheckpointException)
            raise Interrupted(interrupted_at(out), received[0]) from None
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def interrupted_at(out: Path) -> str:
    step = 0
    with contextlib.suppress(OSError):
        for line in (Path(out) / "metrics.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("kind") == "train":
                    step = max(step, int(record.get("step", 0)))
    latest = latest_checkpoint(Path(out) / "checkpoints", read_run_info(out).get("run_id"))
    if latest is None:
        return (f"interrupted at step {step}; the run in '{out}' has no checkpoint yet, so it cannot be continued "
                "(checkpoint.every makes it resumable)")
    return f"interrupted at step {step}; continue with --resume --out {out} (from its checkpoint {latest.name})"


def train_command(job: Path, nproc: int | None, out: Path | None, overrides: list[str], overwrite: bool,
                  nodes: NodeSpec | None = None, max_restarts: int = 0, resume: bool = False) -> dict:
    if max_restarts < 0:
        raise ShoalError(f"--max-restarts {max_restarts}: must be 0 or more")
    if resume and overwrite:
        raise ShoalError("--resume continues the run in --out and --overwrite replaces it; pass one of them")
    if nproc is not None:
        overrides = [*overrides, f"nproc={nproc}"]
    cfg = load_job(job, overrides)
    if resume and out is None:
        raise ShoalError("--resume: name the run directory to continue with --out")
    out = out or default_run_dir(cfg.name)
    max_restarts = max_restarts or cfg.checkpoint.max_restarts
    if launched_by_elastic():  # torchrun started this process as one rank
        return run_job(cfg, str(out), overwrite, resume)
    checked = preflight(cfg, nodes)
    with interruptible(out), holding(cfg, out, overwrite, resume, nodes, checked) as run_id:
        if cfg.nproc == 1 and nodes is None and not max_restarts:
            try:
                return run_job(cfg, str(out), overwrite, resume, run_id)
            except ShoalError:
                raise
            except Exception as err:  # not the user's mistake: this process is rank 0's worker, and it failed
                raise SystemExit(f"error: worker rank 0 on {socket.gethostname()} failed: {failure_summary(err, str(out), 0)}") from None
        args = (cfg.model_dump(), str(out), overwrite, resume, run_id)
        try:
            if nodes is None:
                results = launch_local(worker_main, args, cfg.nproc, max_restarts)
            else:
                results = launch_nodes(worker_main, args, cfg.nproc, nodes, max_restarts, run_id=f"shoal-{cfg.name}")
        except WorkerFailed as err:
            raise SystemExit(f"error: {err}") from None
    errors = [r["error"] for r in results.values() if isinstance(r, dict) and "error" in r]
    if errors:
        raise ShoalError(errors[0])
    return results[min(results)]  # this node's first rank (global rank 0 on one machine)

"""`shoal train`: check everything a user can get wrong, then spawn the workers (or be one, under torchrun)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from shoal.config import load_job
from shoal.data import describe
from shoal.distributed.env import launched_by_elastic
from shoal.errors import ShoalError
from shoal.launch.local import WorkerFailed, launch_local, launch_nodes
from shoal.launch.nodes import NodeSpec
from shoal.job.checks import check_node_counts
from shoal.job.worker import run_job, worker_main
from shoal.plugins import import_plugins
from shoal.models import build_model
from shoal.run_dir import check_writable, default_run_dir


def preflight(cfg, out: Path, overwrite: bool, nodes: NodeSpec | None = None) -> None:
    """Fail before any process starts, with the field to fix."""
    import_plugins(cfg.plugins)
    from shoal.sync import SYNC

    SYNC.get(cfg.sync)  # an unknown strategy names the choices before any worker starts
    spec = describe(cfg.data, cfg.seed)
    with torch.device("meta") if cfg.parallel.meta_init else contextlib.nullcontext():  # a model too big for memory stays shapes only
        build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)
    check_node_counts(cfg, spec.n_train, cfg.nproc, *((nodes.min_nodes, nodes.max_nodes) if nodes else (1, 1)))
    if nodes is None or nodes.is_host:  # the other nodes start while the host may already be writing
        check_writable(out, overwrite)


def train_command(job: Path, nproc: int | None, out: Path | None, overrides: list[str], overwrite: bool,
                  nodes: NodeSpec | None = None, max_restarts: int = 0, resume: bool = False) -> dict:
    if max_restarts < 0:
        raise ShoalError(f"--max-restarts {max_restarts}: must be 0 or more")
    if nproc is not None:
        overrides = [*overrides, f"nproc={nproc}"]
    cfg = load_job(job, overrides)
    if resume and out is None:
        raise ShoalError("--resume: name the run directory to continue with --out")
    out = out or default_run_dir(cfg.name)
    max_restarts = max_restarts or cfg.checkpoint.max_restarts
    if launched_by_elastic():  # torchrun started this process as one rank
        return run_job(cfg, str(out), overwrite, resume)
    preflight(cfg, out, overwrite or resume, nodes)
    if cfg.nproc == 1 and nodes is None and not max_restarts:
        return run_job(cfg, str(out), overwrite, resume)
    args = (cfg.model_dump(), str(out), overwrite, resume)
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

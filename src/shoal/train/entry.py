"""`shoal train`: check everything a user can get wrong, then spawn the workers (or be one, under torchrun)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from shoal.api import check_batching, run_job, worker_main
from shoal.config import load_job
from shoal.data import describe
from shoal.dist.env import launched_by_elastic
from shoal.errors import ShoalError
from shoal.launch.local import WorkerFailed, launch_local
from shoal.models import build_model
from shoal.run_dir import check_writable, default_run_dir


def preflight(cfg, out: Path, overwrite: bool) -> None:
    """Fail before any process starts, with the field to fix."""
    spec = describe(cfg.data, cfg.seed)
    with torch.device("meta") if cfg.parallel.meta_init else contextlib.nullcontext():  # a model too big for memory stays shapes only
        build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)
    check_batching(cfg, spec.n_train, cfg.nproc)
    check_writable(out, overwrite)


def train_command(job: Path, nproc: int | None, out: Path | None, overrides: list[str], overwrite: bool) -> dict:
    if nproc is not None:
        overrides = [*overrides, f"nproc={nproc}"]
    cfg = load_job(job, overrides)
    out = out or default_run_dir(cfg.name)
    if launched_by_elastic():  # torchrun started this process as one rank
        return run_job(cfg, str(out), overwrite)
    preflight(cfg, out, overwrite)
    if cfg.nproc == 1:
        return run_job(cfg, str(out), overwrite)
    try:
        results = launch_local(worker_main, (cfg.model_dump(), str(out), overwrite), cfg.nproc)
    except WorkerFailed as err:
        raise SystemExit(f"error: {err}") from None
    errors = [r["error"] for r in results.values() if isinstance(r, dict) and "error" in r]
    if errors:
        raise ShoalError(errors[0])
    return results[0]

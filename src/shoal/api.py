"""The Python API: `shoal.fit(model, train_set, eval_set, config)`.

The same call works in a plain script (a world of one), in a script run under `torchrun`,
and in the workers `shoal train` spawns; `run_job` is what those workers run for a job file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from shoal import config as config_mod
from shoal.config import JobConfig
from shoal.data import load as load_data
from shoal.dist import DistEnv, init_distributed
from shoal.errors import ShoalError
from shoal.dist.mesh import check_layout
from shoal.launch.nodes import node_counts
from shoal.models import build_model
from shoal.models.gpt import lm_loss
from shoal.checkpoint import Checkpointer, latest_checkpoint
from shoal.run_dir import RunDir
from shoal.train.malloc import keep_freed_memory
from shoal.train.progress import print_summary
from shoal.train.trainer import FitResult, LossFn, Trainer, plan_for, total_steps


def as_config(config: JobConfig | dict | str | Path | None, overrides: list[str] = ()) -> JobConfig:
    if isinstance(config, JobConfig):
        return config_mod.validate(config_mod.apply_overrides(config.model_dump(), list(overrides))) if overrides else config
    if isinstance(config, (str, Path)):
        return config_mod.load_job(config, overrides)
    return config_mod.validate(config_mod.apply_overrides(config or {}, list(overrides)))


def check_batching(cfg: JobConfig, n_train: int, world: int) -> None:
    """Reject layouts that cannot give every rank and micro-batch an equal share."""
    t = cfg.train
    dims = check_layout(cfg.parallel, world)
    world = dims.dp_size  # the batch is dealt over the data-parallel ranks; tp and pp peers share theirs
    if t.global_batch_size % (world * t.grad_accum):
        raise ShoalError(
            f"train.global_batch_size = {t.global_batch_size} must be divisible by processes x train.grad_accum = "
            f"{world} x {t.grad_accum} = {world * t.grad_accum}; pick a multiple of {world * t.grad_accum}"
        )
    if dims.pp > 1:
        check_pipeline_batches(cfg, n_train, dims)
    if total_steps(cfg, plan_for(cfg, n_train, world)) == 0:
        raise ShoalError(
            f"train: nothing to train: {n_train} training samples give 0 steps with global_batch_size = "
            f"{t.global_batch_size}, epochs = {t.epochs}, drop_last = {cfg.data.drop_last}; raise epochs or steps, or lower the batch"
        )



def check_node_counts(cfg: JobConfig, n_train: int, nproc_per_node: int, min_nodes: int = 1, max_nodes: int = 1) -> None:
    """check_batching for every world size the job may run at: an elastic job can shrink or grow to any count."""
    for nodes in node_counts(min_nodes, max_nodes):
        check_batching(cfg, n_train, nproc_per_node * nodes)

def check_pipeline_batches(cfg: JobConfig, n_train: int, dims) -> None:
    """A pipeline schedule fixes its micro-batch shapes at the first step: every step must split evenly."""
    micro = cfg.parallel.microbatches or 2 * dims.pp
    local = cfg.train.global_batch_size // dims.dp_size // cfg.train.grad_accum
    if local % micro:
        raise ShoalError(
            f"parallel.microbatches = {micro} must divide the per-replica batch global_batch_size / (dp x fsdp) / grad_accum = "
            f"{cfg.train.global_batch_size} / {dims.dp_size} / {cfg.train.grad_accum} = {local}"
        )
    plan = plan_for(cfg, n_train, dims.dp_size)
    short_last = n_train % cfg.train.global_batch_size and not cfg.data.drop_last and cfg.data.partition_scope == "batch"
    if short_last and total_steps(cfg, plan) >= plan.steps_per_epoch():
        raise ShoalError(
            f"data: the last batch of an epoch has {n_train % cfg.train.global_batch_size} samples, which a pipeline cannot split "
            f"like the others; set data.drop_last = true or make train.global_batch_size divide {n_train}"
        )


def tune_process(cfg: JobConfig) -> None:
    """Share the cores between the processes on this machine instead of oversubscribing them, and stop
    the C allocator from handing each step's memory back to the OS (train.keep_freed_memory)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = cfg.train.threads or max((os.cpu_count() or 1) // local_world, 1)
    torch.set_num_threads(threads)
    if cfg.train.keep_freed_memory:
        keep_freed_memory()


def _infer_classes(*datasets: Dataset | None) -> int:
    labels = [d.tensors[-1] for d in datasets if isinstance(d, TensorDataset)]
    if not labels:
        raise ShoalError("fit(): pass num_classes= when the data sets are not TensorDatasets")
    return int(torch.cat(labels).max()) + 1


def fit(model: nn.Module, train_set: Dataset, eval_set: Dataset | None = None, config: JobConfig | dict | str | Path | None = None,
        *, num_classes: int | None = None, loss_fn: LossFn = F.cross_entropy, out: str | Path | None = None,
        overwrite: bool = False, overrides: list[str] = (), show_progress: bool = True, summary: bool = True,
        resume: bool = False) -> FitResult:
    """Train `model` data-parallel over however many processes launched this script.

    `loss_fn(output, target, reduction="sum")` must return the sum over the samples (the
    trainer normalises it by the global batch). The returned model is the unwrapped module.
    With `out`, checkpoints go to OUT/checkpoints; `resume=True` (and any restart by the
    launcher) continues from the newest complete one, on this run's world size and layout.
    """
    cfg = as_config(config, overrides)
    env = init_distributed(cfg.dist.backend, cfg.dist.timeout_s)
    tune_process(cfg)
    check_batching(cfg, len(train_set), env.world_size)
    classes = num_classes or _infer_classes(train_set, eval_set)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    checkpoints, resume_from = _checkpoints(cfg, env, out, resume, restarted)
    run_dir = None
    if out is not None and env.is_main:
        run_dir = RunDir(Path(out), overwrite, continuing=resume or restarted)
        run_dir.write_config(config_mod.to_toml(cfg))
    torch.manual_seed(cfg.seed + env.rank)  # dropout and other noise differ per rank, reproducibly
    trainer = Trainer(cfg, env, model, train_set, eval_set, classes, run_dir, loss_fn, show_progress, checkpoints, resume_from)
    result = trainer.fit()
    state = trainer.layout.full_state_dict()  # a collective: every rank takes part; rank 0 gets the whole model
    if run_dir is not None:
        run_dir.save_model(state)
        run_dir.close()
    if summary and env.is_main:
        print_summary(summary_rows(cfg, env, result))
    return result


def _checkpoints(cfg: JobConfig, env: DistEnv, out, resume: bool, restarted: bool) -> tuple[Checkpointer | None, Path | None]:
    """Checkpointing needs a run directory; resuming needs a complete checkpoint in it."""
    wanted = cfg.checkpoint.every or cfg.checkpoint.at_end or resume or restarted
    if out is None or not wanted:
        if resume:
            raise ShoalError("resume: needs the run directory (--out) whose checkpoints to continue from")
        return None, None
    c = cfg.checkpoint
    group = dist.new_group(backend="gloo") if c.async_save and env.world_size > 1 else None  # apart from training's collectives
    checkpoints = Checkpointer(Path(out) / "checkpoints", env.rank, env.world_size, c.keep, group, c.async_save)
    latest = latest_checkpoint(checkpoints.root) if resume or restarted else None
    if resume and latest is None and not restarted:
        raise ShoalError(f"--resume: no complete checkpoint in '{checkpoints.root}'; drop --resume to start afresh")
    return checkpoints, latest


def summary_rows(cfg: JobConfig, env: DistEnv, r: FitResult) -> list[tuple[str, str]]:
    rows = [("job", cfg.name), ("processes", f"{env.world_size} ({env.backend}, {env.device.type})"), ("steps", str(r.steps)),
            ("wall time", f"{r.wall_s:.1f} s"), ("throughput", f"{r.samples_per_s:,.0f} samples/s"), ("final train loss", f"{r.train_loss:.4f}")]
    rows += [(f"eval {k}", f"{v:.4f}") for k, v in r.eval.items()]
    if r.run_dir:
        rows.append(("run directory", r.run_dir))
    return rows


def run_job(cfg: JobConfig, out: str | None, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """What every worker of `shoal train` runs (under shoal's launcher or torchrun)."""
    splits = load_data(cfg.data, cfg.seed)
    with torch.device("meta") if cfg.parallel.meta_init else contextlib.nullcontext():  # shards are materialized later
        model = build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed)
    loss_fn = lm_loss if splits.spec.task == "lm" else F.cross_entropy
    result = fit(model, splits.train, splits.eval, cfg, num_classes=splits.spec.num_classes, loss_fn=loss_fn, out=out, overwrite=overwrite,
                 resume=resume)
    return {"eval": result.eval, "samples_per_s": result.samples_per_s, "wall_s": result.wall_s, "steps": result.steps}


def worker_main(cfg_dict: dict[str, Any], out: str | None, overwrite: bool, resume: bool = False) -> dict[str, Any]:
    """Entry point of a spawned worker; user errors come back as a value so the CLI can print one line."""
    try:
        return run_job(JobConfig.model_validate(cfg_dict), out, overwrite, resume)
    except ShoalError as err:
        return {"error": str(err)}

"""The dry run before any worker starts: build the job's model (on the meta device where it can), push one
micro-batch's shapes through it, and check what the layout asks of it. No process group, no files.

What it catches would otherwise fail inside every worker, after the run directory was made: a factory
that raises, a forward that does not fit the data's shape, fewer outputs than classes, a model too big
for this machine, tensor-parallel sizes that do not divide, unknown tp_plan modules, too few layers for
the pipeline, a parallelize hook that cannot be imported, a sync strategy or compression the layout
cannot use.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from shoal.checkpoint import newest_intact, read_marker, saved_shapes
from shoal.config import JobConfig
from shoal.data import DataSpec, plan_for, total_steps
from shoal.data.batches import call_model
from shoal.distributed.mesh import ParallelDims
from shoal.errors import ShoalError
from shoal.models import build_model, one_line, resolve_factory
from shoal.parallel import pipeline, sharded, tensor
from shoal.parallel.layers import require_chain
from shoal.run_dir import read_run_info
from shoal.run_start import nothing_to_resume, run_complete

CPU_RETRY_PARAMS = 2**26  # a model the meta device cannot run is built for real only up to this size
REAL_PARAMS = 2**22  # a model this small runs its shape check for real: cheaper than the meta device, whose in-place
# ops (ReLU(inplace=True)) go through torch's Python references and import torch._dynamo (~0.4 s of the launcher's start)


def dry_run(cfg: JobConfig, spec: DataSpec, dims: ParallelDims, memory: bool = True) -> None:
    """Every check that needs the model, on shapes only; raises ShoalError naming the field to fix. `memory`: check
    that the model fits this machine (not for files that run it elsewhere)."""
    check_sync(cfg, dims)
    if cfg.parallel.parallelize:
        resolve_factory(cfg.parallel.parallelize, "parallel.parallelize")
    model = _build(cfg, spec, meta=True)
    if memory:
        check_memory(cfg, model, dims)
    check_forward(cfg, spec, dims, model)
    if cfg.parallel.parallelize:
        return  # the hook decides how the model is split
    if dims.tp > 1:
        plan = tensor.resolve_plan(model, cfg.parallel, dims.tp)
        tensor.check_divisible(model, plan, dims.tp)
    if dims.pp > 1:
        check_pipeline(cfg, model, dims)


def _build(cfg: JobConfig, spec: DataSpec, meta: bool) -> nn.Module:
    """On the meta device first (no memory); a factory that cannot build there is built for real."""
    if meta:
        try:
            with torch.device("meta"):
                return build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)
        except ShoalError:
            if cfg.parallel.meta_init:
                raise
        # a factory that needs real tensors (loads weights, calls .item()): its real error follows below
    return build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)


def _is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def check_sync(cfg: JobConfig, dims: ParallelDims) -> None:
    """The strategy and compression the job names can run on this layout (what the workers would refuse)."""
    from shoal.sync import SYNC

    strategy = SYNC.get(cfg.sync)
    if dims.model_parallel and not strategy.supports_model_parallel:
        raise ShoalError(f"sync = '{cfg.sync}' needs parallel.fsdp = tp = pp = 1 (layout here: {dims.describe()})")
    if cfg.sync == "allreduce" and dims.model_parallel and cfg.comm.compression not in ("none", "auto", *sharded.REDUCE_DTYPES):
        raise ShoalError(f"comm.compression = '{cfg.comm.compression}' works on DDP's all-reduce, which layout {dims.describe()} does not use "
                         f"(parallel.fsdp, tp or pp > 1): there only none, fp16 and bf16 (FSDP's reduce dtype) apply")


def _machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: JobConfig, model: nn.Module, dims: ParallelDims) -> None:
    """Weights, gradients and optimizer state of this machine's processes must fit its memory (CPU training)."""
    ram = _machine_memory()
    if ram is None or torch.cuda.is_available():
        return
    params = sum(p.numel() for p in model.parameters())
    states = 2 if cfg.optimizer.name == "adamw" else (1 if cfg.optimizer.momentum else 0)
    per_copy = params * 4 * (2 + states)  # fp32 weights, gradients, optimizer state
    need = per_copy * cfg.nproc / (dims.fsdp * dims.tp * dims.pp)
    if need > ram:
        raise ShoalError(f"model: {cfg.model.name} has {params:,} parameters; with their gradients and {cfg.optimizer.name} state "
                         f"{cfg.nproc} process(es) need {need / 2**30:,.1f} GiB, more than this machine's {ram / 2**30:.1f} GiB; "
                         "make the model smaller (model.*) or shard it (parallel.fsdp)")


def _micro_batch(cfg: JobConfig, dims: ParallelDims) -> int:
    local = cfg.train.global_batch_size // max(dims.dp_size, 1) // cfg.train.grad_accum // max(dims.microbatches, 1)
    return max(1, min(local, 4))


def check_forward(cfg: JobConfig, spec: DataSpec, dims: ParallelDims, model: nn.Module) -> None:
    """One micro-batch of the data's shape through the model; its output must fit the loss."""
    batch = _micro_batch(cfg, dims)
    out = _forward(cfg, spec, model, batch)
    if out is None:
        return  # too big to run for real and the meta device cannot: the workers will tell
    name = cfg.model.name
    if not isinstance(out, torch.Tensor):  # a ModelOutput, dict or tuple: the loss scores train.output_key (shoal.train.losses)
        from shoal.train.losses import scores_of

        out = scores_of(out, cfg.train.output_key)
    if not isinstance(out, torch.Tensor):
        raise ShoalError(f"model.name: {name} returned {type(out).__name__} from forward, not a tensor of class scores")
    if spec.task == "lm":
        want = f"(batch, {spec.input_shape[0]}, >= {spec.num_classes})"
        ok = out.dim() == 3 and tuple(out.shape[:2]) == (batch, spec.input_shape[0]) and out.shape[2] >= spec.num_classes
    else:
        want = f"(batch, >= {spec.num_classes} classes)"
        ok = out.dim() == 2 and out.shape[0] == batch and out.shape[1] >= spec.num_classes
    if not ok:
        raise ShoalError(f"model.name: {name} maps a batch of {batch} inputs shaped {tuple(spec.input_shape)} to an output shaped "
                         f"{tuple(out.shape)}; training needs {want}: the data's labels go up to {spec.num_classes - 1}")


def _sample(spec: DataSpec, batch: int, device: str) -> torch.Tensor:
    if spec.dict_inputs:  # transformers-style batches: the model is called as model(**batch)
        return {"input_ids": torch.zeros((batch, *spec.input_shape), dtype=torch.long, device=device)}
    if spec.task == "lm":
        return torch.zeros((batch, *spec.input_shape), dtype=torch.long, device=device)
    return torch.zeros((batch, *spec.input_shape), device=device)


def _forward(cfg: JobConfig, spec: DataSpec, model: nn.Module, batch: int) -> torch.Tensor | None:
    small = _is_meta(model) and sum(p.numel() for p in model.parameters()) <= REAL_PARAMS and not cfg.parallel.meta_init
    if small:
        model = _build(cfg, spec, meta=False)
    if _is_meta(model):
        try:
            with torch.no_grad():
                return call_model(model, _sample(spec, batch, "meta"))
        except Exception:  # an op without a meta kernel, or a real mismatch: run it for real to tell which
            pass
        if sum(p.numel() for p in model.parameters()) > CPU_RETRY_PARAMS:
            return None
        model = _build(cfg, spec, meta=False)
    try:
        with torch.no_grad():
            return call_model(model, _sample(spec, batch, "cpu"))
    except ShoalError:
        raise
    except Exception as err:
        raise ShoalError(f"model.name: {cfg.model.name} fails on a batch of {batch} inputs shaped {tuple(spec.input_shape)} "
                         f"(the data's): {one_line(err)}") from None


def check_pipeline(cfg: JobConfig, model: nn.Module, dims: ParallelDims) -> None:
    """What pipeline.choose_split checks on every rank, without a process group."""
    p = cfg.parallel
    names = require_chain(model, f"parallel.pp = {dims.pp}")
    stages = pipeline.n_stages(dims, p)
    if stages > len(names):
        raise ShoalError(f"parallel.pp: {stages} stages need at least {stages} layers, the model has {len(names)} ({', '.join(names)})")
    if p.pp_split:
        pipeline._cuts_from_names(names, p.pp_split, stages)
    elif stages > len(pipeline.weighted_units(model, names)):
        raise ShoalError(f"parallel.pp: {stages} stages need at least {stages} layers with weights, "
                         f"the model has {len(pipeline.weighted_units(model, names))}")


def check_resume(cfg: JobConfig, spec: DataSpec, dims: ParallelDims, out: Path) -> None:
    """--resume, before any worker starts: the newest intact checkpoint holds this job's model shapes, and the run
    is not already complete."""
    from shoal.sync import SYNC, SyncStrategy

    latest, skipped = newest_intact(Path(out) / "checkpoints", read_run_info(out).get("run_id"))
    if latest is None:
        raise nothing_to_resume(Path(out) / "checkpoints", skipped)
    saved = saved_shapes(latest)
    if saved:
        for key, value in _build(cfg, spec, meta=True).state_dict().items():
            if key not in saved:
                raise ShoalError(f"resume: this job's model has '{key}', which the checkpoint {latest.name} in '{out}' lacks; "
                                 "resume with the run's model, or train into another directory")
            if tuple(saved[key]) != tuple(value.shape):
                raise ShoalError(f"resume: '{key}' is shaped {tuple(value.shape)} in this job's model but {tuple(saved[key])} in the "
                                 f"checkpoint {latest.name} in '{out}' (another model or data?); resume with the run's settings")
    strategy = SYNC.get(cfg.sync)
    strategy.check_checkpoint(cfg, dims.world, read_marker(latest), latest)
    if strategy.total_steps is not SyncStrategy.total_steps or strategy.batch_plan is not SyncStrategy.batch_plan:
        return  # the strategy counts its own steps
    step = int(read_marker(latest).get("step", 0))
    total = total_steps(cfg, plan_for(cfg, spec.n_train, dims.dp_size))
    if step >= total:
        raise run_complete(out, step, total)

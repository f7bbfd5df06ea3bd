"""Parallel strategies, one file each, applied by `build` in a fixed order:
tensor parallel -> pipeline split -> activation checkpointing -> FSDP (or DDP when the layout
is plain data parallel). The trainer only sees the resulting `Layout`.
"""

from __future__ import annotations

import torch
from torch import nn

from shoal.config import JobConfig
from shoal.dist import DistEnv
from shoal.dist.mesh import ParallelDims, check_layout
from shoal.errors import ShoalError
from shoal.parallel import checkpointing, data, pipeline, sharded, tensor
from shoal.parallel.materialize import is_meta, materialize
from shoal.parallel.runtime import Layout, MicroLoss, Pipelined, Replicated, Sharded


def _user_hook(model: nn.Module, dims: ParallelDims, env: DistEnv, cfg: JobConfig, keys: list[str]) -> Layout:
    from shoal.models import resolve_factory

    module = resolve_factory(cfg.parallel.parallelize)(model, dims.mesh, cfg)
    if not isinstance(module, nn.Module):
        raise ShoalError(f"parallel.parallelize: {cfg.parallel.parallelize} returned {type(module).__name__}, not the parallelized nn.Module")
    return Sharded([module], dims, env, keys)


def build(model: nn.Module, env: DistEnv, cfg: JobConfig, sample: torch.Tensor) -> Layout:
    """Split `model` over the processes as cfg.parallel says; `sample` is one micro-batch of inputs (for costing stages)."""
    p = cfg.parallel
    dims = check_layout(p, env.world_size)
    keys = list(model.state_dict().keys())
    if p.parallelize:
        return _user_hook(model, dims, env, cfg, keys)
    if not dims.model_parallel:
        if is_meta([model]):
            materialize([model], model, env.device)
        if p.activation_checkpointing:
            checkpointing.apply(model)
        return Replicated([data.apply(model, env, cfg.comm)], dims, env, keys)
    if cfg.comm.hook != "none":
        raise ShoalError(f"comm.hook = '{cfg.comm.hook}' compresses DDP's all-reduce; it needs parallel.fsdp = tp = pp = 1 (layout here: {dims.describe()})")
    split = pipeline.choose_split(model, sample.to("meta") if is_meta([model]) else sample, dims, p) if dims.pp > 1 else None
    if dims.tp > 1:
        tensor.apply(model, dims.submesh("tp"), p)
    stages = pipeline.local_stages(model, split, dims.coords(env.rank)["pp"], dims.pp) if split else {0: model}
    modules = list(stages.values())
    for m in modules:
        if p.activation_checkpointing:
            checkpointing.apply(m)
        if dims.dp_size > 1:
            sharded.apply(m, dims.dp_mesh, reshard_after_forward=split is None)
    if is_meta(modules):
        materialize(modules, model, env.device)
    if split is None:
        return Sharded(modules, dims, env, keys)
    micro_loss = MicroLoss()
    schedule, pipeline_stages = pipeline.build_schedule(stages, len(split.stages), dims, p, env.device, micro_loss)
    layout = Pipelined(modules, dims, env, keys, schedule, pipeline_stages, micro_loss)
    layout.info["pipeline"] = {"schedule": p.pp_schedule, "microbatches": pipeline.microbatch_count(dims, p),
                               "stages": split.stages, "predicted_s": split.predicted_s, "imbalance": split.imbalance}
    return layout


__all__ = ["Layout", "ParallelDims", "build", "check_layout"]

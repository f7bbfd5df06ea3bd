"""Parallel strategies, one file each, applied by `build` in a fixed order:
tensor parallel -> pipeline split -> activation checkpointing -> FSDP (or, when the layout is
plain data parallel, the sync strategy's `wrap`: DDP for all-reduce). The trainer only sees
the resulting `Layout`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from shoal.config import JobConfig
from shoal.distributed import DistEnv
from shoal.distributed.mesh import ParallelDims, check_layout
from shoal.errors import ShoalError
from shoal.parallel import hf_pipeline, pipeline, recompute, sharded, tensor
from shoal.parallel.layout import Layout, MicroLoss, Pipelined, Replicated, Sharded
from shoal.parallel.materialize import is_meta, materialize

Wrap = Callable[[nn.Module, torch.Tensor], nn.Module]


def _user_hook(model: nn.Module, dims: ParallelDims, env: DistEnv, cfg: JobConfig, keys: list[str]) -> Layout:
    from shoal.models import resolve_factory

    module = resolve_factory(cfg.parallel.parallelize, "parallel.parallelize")(model, dims.mesh, cfg)
    if not isinstance(module, nn.Module):
        raise ShoalError(f"parallel.parallelize: {cfg.parallel.parallelize} returned {type(module).__name__}, not the parallelized nn.Module")
    return Sharded([module], dims, env, keys)


def build(model: nn.Module, env: DistEnv, cfg: JobConfig, dims: ParallelDims, sample: torch.Tensor, wrap: Wrap) -> Layout:
    """Split `model` over the processes as `dims` says; `sample` is one micro-batch of inputs (for costing stages);
    `wrap` makes a whole replica of a plain data-parallel layout (the sync strategy's)."""
    p = cfg.parallel
    keys = list(model.state_dict().keys())
    if p.parallelize:
        return _user_hook(model, dims, env, cfg, keys)
    if not dims.model_parallel:
        if is_meta([model]):
            materialize([model], model, env.device)
        if p.activation_checkpointing:
            recompute.apply(model)
        return Replicated([wrap(model, sample if isinstance(sample, torch.Tensor) else None)], dims, env, keys)  # dict batches: no probe
    if dims.pp > 1 and getattr(cfg.train, "loss", "auto") == "model":
        raise ShoalError("train.loss = 'model' needs the whole model's output; with parallel.pp > 1 use train.loss = 'lm' or 'cross_entropy'")
    staged = hf_pipeline.pack(sample, model) if dims.pp > 1 else sample  # dict batches: one tensor into stage 0 (keys checked)
    split = pipeline.choose_split(model, staged.to("meta") if is_meta([model]) else staged, dims, p) if dims.pp > 1 else None
    if dims.tp > 1:
        tensor.apply(model, dims.submesh("tp"), p, sample)
    stages = pipeline.local_stages(model, split, dims.coords(env.rank)["pp"], dims.pp) if split else {0: model}
    modules = list(stages.values())
    for m in modules:
        if p.activation_checkpointing:
            recompute.apply(m)
        if dims.dp_size > 1:
            sharded.apply(m, dims.dp_mesh, reshard_after_forward=split is None, compression=cfg.comm.compression)
    if is_meta(modules):
        materialize(modules, model, env.device)
    if split is None:
        return Sharded(modules, dims, env, keys)
    micro_loss = MicroLoss()
    layout = Pipelined(modules, dims, env, keys, lambda: pipeline.build_schedule(stages, len(split.stages), dims, p, env.device, micro_loss),
                       micro_loss)
    layout.info["pipeline"] = {"schedule": p.pp_schedule, "microbatches": dims.microbatches,
                               "stages": split.stages, "predicted_s": split.predicted_s, "imbalance": split.imbalance}
    return layout


__all__ = ["Layout", "ParallelDims", "build", "check_layout"]

"""Pipeline parallel: cut the chain of layers into stages and run them with a
`torch.distributed.pipelining` schedule (GPipe, 1F1B, or interleaved 1F1B).

A stage is a `StageChain` holding its layers under their original names, so its state_dict
keys are the unsplit model's and the gathered model.pt needs no renaming. With the interleaved
schedule each rank holds `stages_per_rank` stages: stage s lives on pipeline rank s % pp.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from shoal.config import ParallelConfig
from shoal.distributed.mesh import ParallelDims
from shoal.errors import ShoalError
from shoal.parallel import hf_pipeline, stage_split
from shoal.parallel.layers import require_chain

SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B", "interleaved": "ScheduleInterleaved1F1B"}  # torch.distributed.pipelining names


class StageChain(nn.Module):
    """A contiguous run of the model's layers, registered under their original dotted names."""

    def __init__(self, model: nn.Module, names: list[str], steps: dict | None = None):
        super().__init__()
        self.names = list(names)
        self.steps = {n: steps[n] for n in names if n in steps} if steps else {}  # how each layer is called (transformers models)
        for name in names:
            *path, leaf = name.split(".")
            parent = self
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, model.get_submodule(name))

    def pipeline_layers(self) -> list[str]:
        return self.names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names:
            step = self.steps.get(name)
            x = step(self.get_submodule(name), x) if step else self.get_submodule(name)(x)
        return x


def steps_of(model: nn.Module) -> dict:
    """Step functions of a transformers model's chain (parallel/hf_pipeline.py); empty for a plain chain."""
    found = hf_pipeline.chain(model) if not hasattr(model, "pipeline_layers") and not isinstance(model, nn.Sequential) else None
    return found[1] if found else {}


def n_stages(dims: ParallelDims, cfg: ParallelConfig) -> int:
    return dims.pp * (cfg.stages_per_rank if cfg.pp_schedule == "interleaved" else 1)


def _measured_speeds(dims: ParallelDims) -> list[float]:
    """Each pipeline rank's matmul FLOP/s, the slowest of its replicas (a stage runs at its slowest copy's pace)."""
    mine = torch.tensor([stage_split.matmul_speed(0.1) * 1e9], dtype=torch.float64)
    every = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return [min(float(t) for r, t in enumerate(every) if dims.coords(r)["pp"] == p) for p in range(dims.pp)]


def stage_speeds(dims: ParallelDims, cfg: ParallelConfig, stages: int, timed: bool) -> list[float]:
    """Speed of each stage's owner in cost units per second (FLOP/s, or for measured costs, relative to rank 0).

    From parallel.pp_speeds (relative), or measured on every rank, or equal; absolute FLOP/s
    come from rank 0's matmul rate so that predicted stage times are in seconds.
    """
    if cfg.pp_measure_speed and not cfg.pp_speeds:
        per_rank = _measured_speeds(dims)
        if timed:
            per_rank = [v / per_rank[0] for v in per_rank]
    else:
        relative = list(cfg.pp_speeds) or [1.0] * dims.pp
        base = 1.0
        if not timed:
            rate = torch.tensor([stage_split.matmul_speed(0.1) * 1e9], dtype=torch.float64)
            dist.broadcast(rate, src=0)
            base = float(rate)
        per_rank = [base * v / relative[0] for v in relative]
    return [per_rank[s % dims.pp] for s in range(stages)]


def _cuts_from_names(names: list[str], split: list[str], stages: int) -> list[int]:
    unknown = [s for s in split if s not in names]
    if unknown:
        raise ShoalError(f"parallel.pp_split: {unknown[0]!r} is not one of the model's layers {names}")
    cuts = [names.index(s) for s in split]
    if len(cuts) != stages - 1 or cuts != sorted(set(cuts)) or 0 in cuts:
        raise ShoalError(f"parallel.pp_split: give {stages - 1} distinct layer names in forward order, none the first layer (got {split})")
    return cuts


def choose_split(model: nn.Module, sample: torch.Tensor, dims: ParallelDims, cfg: ParallelConfig) -> stage_split.Split:
    """Where to cut; every rank computes the same answer (measured times come from rank 0)."""
    names = require_chain(model, f"parallel.pp = {dims.pp}")
    stages = n_stages(dims, cfg)
    if stages > len(names):
        raise ShoalError(f"parallel.pp: {stages} stages need at least {stages} layers, the model has {len(names)} ({', '.join(names)})")
    speeds = stage_speeds(dims, cfg, stages, timed=cfg.pp_balance == "time")
    if cfg.pp_balance == "time":
        costs = torch.tensor(stage_split.timed_costs(model, names, sample, steps_of(model)), dtype=torch.float64)
        dist.broadcast(costs, src=0)
        costs = costs.tolist()
    else:
        costs = stage_split.flop_costs(model, names, sample, steps_of(model))
    if cfg.pp_split:
        return stage_split.make_split(names, costs, speeds, _cuts_from_names(names, cfg.pp_split, stages))
    units = weighted_units(model, names)  # cut only before layers with weights: no stage is left without any
    if stages > len(units):
        raise ShoalError(f"parallel.pp: {stages} stages need at least {stages} layers with weights, the model has {len(units)}")
    unit_costs = [sum(costs[i] for i in unit) for unit in units]
    unit_cuts = stage_split.equal_counts(len(units), stages) if cfg.pp_balance == "layers" else stage_split.partition(unit_costs, speeds)
    return stage_split.make_split(names, costs, speeds, [units[c][0] for c in unit_cuts])


def weighted_units(model: nn.Module, names: list[str]) -> list[list[int]]:
    """Layer positions grouped so that each group ends with a layer that has weights (ReLU, Flatten join the next one)."""
    units, pending = [], []
    for i, name in enumerate(names):
        pending.append(i)
        if any(True for _ in model.get_submodule(name).parameters()):
            units.append(pending)
            pending = []
    if pending:
        if units:
            units[-1] += pending
        else:
            units.append(pending)
    return units


def check_untied(stages: list[list[str]], model: nn.Module) -> None:
    owner: dict[int, int] = {}
    for s, names in enumerate(stages):
        for name in names:
            for p in model.get_submodule(name).parameters():
                if owner.setdefault(id(p), s) != s:
                    fix = ("set tie_word_embeddings = false in model.kwargs (or in the model's transformers config)"
                           if hasattr(model, "config") else "set model.tie_head = false")
                    raise ShoalError(f"parallel.pp: a parameter is shared by two pipeline stages (tied weights); {fix}")


def local_stages(model: nn.Module, split: stage_split.Split, pp_rank: int, pp: int) -> dict[int, StageChain]:
    check_untied(split.stages, model)
    for s, names in enumerate(split.stages):
        if not any(True for n in names for _ in model.get_submodule(n).parameters()):
            raise ShoalError(f"parallel.pp_split: stage {s} ({', '.join(names)}) has no weights; move its boundary")
    steps = steps_of(model)
    return {s: StageChain(model, names, steps) for s, names in enumerate(split.stages) if s % pp == pp_rank}


def build_schedule(stages: dict[int, nn.Module], total: int, dims: ParallelDims, cfg: ParallelConfig, device: torch.device, loss_fn):
    """The schedule sums micro-batch losses as they come (scale_grads=False): loss_fn already normalises."""
    from torch.distributed import pipelining  # imported here: ~1.4 s of CPU in every worker, and only pp > 1 needs it

    group = dims.submesh("pp").get_group()
    pipeline_stages = [pipelining.PipelineStage(module, s, total, device, group=group) for s, module in sorted(stages.items())]
    schedule_cls = getattr(pipelining, SCHEDULES[cfg.pp_schedule])
    micro = dims.microbatches
    if cfg.pp_schedule == "interleaved":
        return schedule_cls(pipeline_stages, micro, loss_fn=loss_fn, scale_grads=False), pipeline_stages
    return schedule_cls(pipeline_stages[0], micro, loss_fn=loss_fn, scale_grads=False), pipeline_stages

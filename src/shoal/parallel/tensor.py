"""Tensor parallel: split each layer's matrices over the `tp` ranks with DTensor.

The plan maps module paths to styles. It comes from the job file (`parallel.tp_plan`), else
the model's own `tensor_parallel_plan()` (gpt), else pairs of consecutive Linear layers:
column-parallel then row-parallel, so one all-reduce closes each pair (Megatron's MLP).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, SequenceParallel, parallelize_module

from shoal.config import ParallelConfig
from shoal.errors import ShoalError
from shoal.parallel.layers import has_module

STYLES = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel, "sequence": SequenceParallel}


def auto_plan(model: nn.Module) -> dict[str, str]:
    """Linear layers in definition order, paired colwise -> rowwise; an odd last one stays whole."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    plan = {}
    for first, second in zip(linears[0::2], linears[1::2]):
        plan[first], plan[second] = "colwise", "rowwise"
    return plan


def resolve_plan(model: nn.Module, cfg: ParallelConfig, tp: int) -> dict[str, ParallelStyle]:
    if cfg.tp_plan:
        missing = [name for name in cfg.tp_plan if not has_module(model, name)]
        if missing:
            raise ShoalError(f"parallel.tp_plan: the model has no module {missing[0]!r}; use names from model.named_modules()")
        return {name: STYLES[style]() for name, style in cfg.tp_plan.items()}
    if hasattr(model, "tensor_parallel_plan"):
        if hasattr(model, "check_tensor_parallel"):
            try:
                model.check_tensor_parallel(tp)
            except ValueError as err:
                raise ShoalError(f"parallel.tp: {err}") from None
        return model.tensor_parallel_plan(cfg.sequence_parallel)
    plan = auto_plan(model)
    if not plan:
        raise ShoalError(f"parallel.tp = {tp}: {type(model).__name__} has fewer than two Linear layers; give parallel.tp_plan")
    return {name: STYLES[style]() for name, style in plan.items()}


def check_divisible(model: nn.Module, plan: dict[str, ParallelStyle], tp: int) -> None:
    """Uneven shards compute right but make ranks wait on each other; refuse them with the sizes."""
    for name, style in plan.items():
        module = model.get_submodule(name)
        if isinstance(style, (ColwiseParallel, RowwiseParallel)) and isinstance(module, (nn.Linear, nn.Embedding)):
            dim = 0 if isinstance(style, ColwiseParallel) != isinstance(module, nn.Embedding) else 1
            size = module.weight.shape[dim]
            if size % tp:
                raise ShoalError(f"parallel.tp = {tp}: layer {name!r} has {size} {'outputs' if dim == 0 else 'inputs'}, not divisible by {tp}")


def apply(model: nn.Module, tp_mesh: DeviceMesh, cfg: ParallelConfig) -> nn.Module:
    plan = resolve_plan(model, cfg, tp_mesh.size())
    check_divisible(model, plan, tp_mesh.size())
    tied = getattr(getattr(model, "cfg", None), "tie_head", False)
    parallelize_module(model, tp_mesh, plan)
    if tied:  # both halves are Shard(0) over the vocabulary: share the one DTensor again
        model.output.weight = model.tok_embeddings.weight
    return model

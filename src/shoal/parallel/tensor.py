"""Tensor parallel: split each layer's matrices over the `tp` ranks with DTensor.

The plan maps module paths to styles. It comes from the job file (`parallel.tp_plan`), else
the model's own `tensor_parallel_plan()` (gpt), else pairs of consecutive Linear layers:
column-parallel then row-parallel, so one all-reduce closes each pair (Megatron's MLP).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, SequenceParallel, parallelize_module

from shoal.config import ParallelConfig
from shoal.data.batches import call_model
from shoal.errors import ShoalError
from shoal.parallel import hf_plans
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
    kind = hf_plans.family(model)  # transformers GPT-2, BERT, Llama: built-in plans (parallel/hf_plans.py)
    if kind == "gpt2":
        hf_plans.check_gpt2(model, tp)
        return {}  # Conv1D layers: split by hand in apply()
    if kind is not None:
        return hf_plans.styles(hf_plans.linear_plan(model, tp))
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


def apply(model: nn.Module, tp_mesh: DeviceMesh, cfg: ParallelConfig, sample=None) -> nn.Module:
    """`sample`: one micro-batch of inputs; an automatic plan (not the job's tp_plan, not the model's own) is checked on it."""
    automatic = not cfg.tp_plan and not hasattr(model, "tensor_parallel_plan")
    meta = any(p.is_meta for p in model.parameters())
    reference = _output(model, sample) if automatic and sample is not None and not meta else None
    plan = resolve_plan(model, cfg, tp_mesh.size())
    check_divisible(model, plan, tp_mesh.size())
    tied = getattr(getattr(model, "cfg", None), "tie_head", False)
    if hf_plans.family(model) == "gpt2" and not cfg.tp_plan:
        hf_plans.apply_gpt2(model, tp_mesh)
    else:
        parallelize_module(model, tp_mesh, plan)
    if tied:  # both halves are Shard(0) over the vocabulary: share the one DTensor again
        model.output.weight = model.tok_embeddings.weight
    if reference is not None:
        _validate(model, sample, reference, tp_mesh)
    return model


def _first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "keys"):
        if "logits" in out.keys():
            return out["logits"]
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    return out[0]


@torch.no_grad()
def _output(model: nn.Module, sample) -> torch.Tensor:
    was = model.training
    model.eval()  # no dropout: the comparison is exact up to rounding
    try:
        out = _first_tensor(call_model(model, sample))
    finally:
        model.train(was)
    return out.full_tensor() if hasattr(out, "full_tensor") else out


def _validate(model: nn.Module, sample, reference: torch.Tensor, tp_mesh: DeviceMesh) -> None:
    """The sharded model on the same batch must give the unsharded output; every tensor-parallel peer decides alike."""
    why = ""
    try:
        out = _output(model, sample)
        if out.shape != reference.shape:
            why = f"output shaped {tuple(out.shape)} instead of {tuple(reference.shape)}"
        elif not torch.allclose(out.float(), reference.float(), rtol=1e-4, atol=1e-5):
            why = f"outputs differ by up to {float((out.float() - reference.float()).abs().max()):.3g}"
    except Exception as err:  # a plan that splits paired layers differently fails inside the forward
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        why = f"{type(err).__name__}: {lines[-1].strip() if lines else ''}"
    bad = torch.tensor([1.0 if why else 0.0])
    dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=tp_mesh.get_group())
    if float(bad) > 0:
        raise ShoalError(f"parallel.tp = {tp_mesh.size()}: the automatic tensor-parallel plan for {type(model).__name__} does not reproduce "
                         f"the unsharded model on one batch ({why or 'on another rank'}); give parallel.tp_plan or parallel.parallelize")

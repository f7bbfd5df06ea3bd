"""What the strategies need to know of a model's structure: its chain of layers.

A model is a chain when forward() is layer after layer, one tensor in and one out: an
nn.Sequential, or any module with `pipeline_layers()` naming its parts in order (gpt).
The pipeline cuts between them; FSDP and activation checkpointing wrap the ones with weights.
"""

from __future__ import annotations

from torch import nn

from shoal.errors import ShoalError


def chain(model: nn.Module) -> list[str] | None:
    if hasattr(model, "pipeline_layers"):
        return list(model.pipeline_layers())
    if isinstance(model, nn.Sequential):
        return [name for name, _ in model.named_children()]
    return None


def require_chain(model: nn.Module, why: str) -> list[str]:
    names = chain(model)
    if not names:  # a transformers GPT-2 or BERT classifier: its built-in chain (parallel/hf_pipeline.py)
        from shoal.parallel import hf_pipeline

        found = hf_pipeline.chain(model)
        names = found[0] if found else None
    if not names:
        raise ShoalError(
            f"{why}: {type(model).__name__} is not a chain of layers; make it an nn.Sequential, give it a "
            "pipeline_layers() method naming its layers in forward order, or take control with parallel.parallelize"
        )
    return names


def blocks(model: nn.Module) -> list[str]:
    """Units worth wrapping one by one (FSDP, checkpointing): the model's own list, else chain layers with weights,
    else the blocks of its repeated block list (a transformers model's `transformer.h`, `encoder.layer`, `model.layers`)."""
    if hasattr(model, "checkpoint_layers"):
        return list(model.checkpoint_layers())
    names = chain(model)
    if names is None:
        found = block_list(model)
        return [f"{found}.{i}" for i in range(len(model.get_submodule(found)))] if found else []
    return [n for n in names if any(True for _ in model.get_submodule(n).parameters())]


def block_list(model: nn.Module) -> str | None:
    """The path of the model's list of repeated transformer blocks: the first ModuleList of two or more modules of one
    class, with weights (`transformer.h` in GPT-2, `bert.encoder.layer`, `model.layers` in Llama); None without one."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and len({type(m) for m in module}) == 1:
            if any(True for _ in module[0].parameters()):
                return name
    return None


def has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False

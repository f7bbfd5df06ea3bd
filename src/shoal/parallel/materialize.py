"""Models too big for one process: built on the meta device, given memory only for the local
shards after every strategy ran, and filled from `init_parameter(name, shape)` one parameter at
a time (each rank makes one whole tensor at once, at most, and keeps its slice), buffers from
`init_buffer(name, shape)`. The values equal an ordinary build's, so layouts stay comparable with
single-process runs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from shoal.errors import ShoalError


def is_meta(modules: list[nn.Module]) -> bool:
    return any(p.is_meta for m in modules for p in m.parameters())


@torch.no_grad()
def materialize(modules: list[nn.Module], source: nn.Module, device: torch.device) -> None:
    init = getattr(source, "init_parameter", None)
    if init is None:
        raise ShoalError(f"parallel.meta_init: {type(source).__name__} has no init_parameter(name, shape) method to fill its shards")
    for module in modules:
        ties = _ties(module)
        module.to_empty(device=device)
        for first, *others in ties:  # to_empty gives each use of a shared parameter its own copy: share again
            shared = module.get_parameter(first)
            for name in others:
                owner, _, leaf = name.rpartition(".")
                setattr(module.get_submodule(owner), leaf, shared)
        for name, p in module.named_parameters():
            full = init(name, p.shape).to(device)
            if isinstance(p, DTensor):
                p.to_local().copy_(distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local())
            else:
                p.copy_(full)
        for name, b in module.named_buffers():  # to_empty left them unset too
            init_buffer = getattr(source, "init_buffer", None)
            if init_buffer is None:
                raise ShoalError(f"parallel.meta_init: {type(source).__name__} has buffer {name} and no init_buffer(name, shape) "
                                 "method to fill it")
            b.copy_(init_buffer(name, b.shape).to(device))


def _ties(module: nn.Module) -> list[list[str]]:
    """Names of parameters shared between modules (a tied output head), grouped."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]

"""Initial values of a transformers model one tensor at a time, from its name alone (what `parallel.meta_init`
needs: a rank fills only its shards, and they must equal an ordinary build's).

transformers initialises module by module (`_init_weights`, children before parents, each sub-model with its own).
Here each tensor is made alone: on a meta copy of the model where only that tensor is real, the `_init_weights`
of its module and then of each ancestor run (ops on the other, meta, tensors do nothing and draw no random
numbers), under a generator seeded by the job's seed and the tensor's name. The ordinary build uses the same
values, so both agree exactly. A tensor that transformers' init leaves to the constructor keeps the
constructor's value in an ordinary build; on the meta device there is none, and it is refused with one line.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from shoal.errors import ShoalError


class HFInit:
    def __init__(self, cls, config, seed: int):
        self.cls, self.config, self.seed = cls, config, seed
        self._skeleton: nn.Module | None = None

    @property
    def skeleton(self) -> nn.Module:
        if self._skeleton is None:
            with torch.device("meta"):
                self._skeleton = self.cls(self.config)
        return self._skeleton

    def value(self, name: str, shape: torch.Size) -> torch.Tensor | None:
        """The tensor's initial value, or None where transformers' init does not set all of it."""
        *path, leaf = name.split(".")
        chain = [self.skeleton]
        for part in path:
            chain.append(getattr(chain[-1], part))
        owner = chain[-1]
        slot = owner._parameters if leaf in owner._parameters else owner._buffers
        meta = slot[leaf]
        fills = [float("nan")] if meta.is_floating_point() else [0, 1]  # integers: a value left alone shows as a difference
        made = []
        for fill in fills:
            t = torch.full(tuple(shape), fill, dtype=meta.dtype, device="cpu")
            slot[leaf] = nn.Parameter(t, requires_grad=False) if slot is owner._parameters else t
            try:
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    torch.manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
                    for module, init in reversed(_dispatch(chain)):
                        init(module)
            finally:
                slot[leaf] = meta
            made.append(t)
        if made[0].is_floating_point() and bool(made[0].isnan().any()) or len(made) > 1 and not torch.equal(*made):
            return None
        return made[0]

    def init_parameter(self, name: str, shape: torch.Size) -> torch.Tensor:
        """For parallel/materialize.py: the value, or one line saying why a meta build cannot have it."""
        value = self.value(name, shape)
        if value is None:
            raise ShoalError(f"parallel.meta_init: {self.cls.__name__}'s initialisation (_init_weights) does not set {name}, whose value "
                             "comes from its constructor; set parallel.meta_init = false")
        return value


def _dispatch(chain: list[nn.Module]) -> list[tuple[nn.Module, object]]:
    """Each module of the path with the `_init_weights` transformers applies to it: its nearest enclosing model's."""
    from transformers import PreTrainedModel

    out, current = [], None
    for module in chain:
        if isinstance(module, PreTrainedModel):
            current = module._init_weights
        if current is not None:
            out.append((module, current))
    return out


@torch.no_grad()
def attach(model: nn.Module, cls, config, seed: int) -> nn.Module:
    """Give `model` these initial values (unless it is on the meta device, to be materialized later) and the
    init_parameter / init_buffer methods materialize uses."""
    init = HFInit(cls, config, seed)
    if not any(t.is_meta for t in model.parameters()):
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            value = init.value(name, t.shape)
            if value is not None:
                t.copy_(value)
    model.init_parameter = init.init_parameter
    model.init_buffer = init.init_parameter
    return model

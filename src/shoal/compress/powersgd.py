"""PowerSGD (Vogels et al., 2019) as torch implements it, with its state checkpointed; its warm-up steps
(`comm.powersgd_warmup`, plain all-reduce in torch) travel as fp16, and with `comm.powersgd_factors = "fp16"`
or "bf16" so do its factors (powersgd_factors.py).

Its error feedback, warm-start matrices, random generator and iteration count decide every
later step, so they go into checkpoints: a restarted run continues bit-identical. torch keys
that state by DDP bucket, and a bucket's layout changes between DDP's first step (parameters
in model order) and the rest (in the order gradients became ready), so a restart would put
every saved value against the wrong parameter (and so does DDP's own rebuild, one step after
a restart, once PowerSGD is already running). The state is therefore kept per parameter in
checkpoints and moved whenever a bucket's layout changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

from shoal.compress import powersgd_factors
from shoal.compress.base import COMPRESSORS, Compressor
from shoal.compress.cast import Float16
from shoal.config import CommConfig

PER_BUCKET = ("error_dict", "p_memory_dict", "q_memory_dict")


@dataclass(frozen=True)
class Slot:
    """One parameter's place in a bucket: its flat size, its matrix view (n x m) and whether it travels as P, Q."""

    key: int  # the parameter's index in model.parameters(): the same in every process of the run
    numel: int
    n: int
    m: int
    rank: int
    compressed: bool


def _pq_positions(slots: list[Slot]) -> list[int]:
    """Where in the bucket each matrix of torch's P and Q layout is: by matrix shape (first appearance), then in
    bucket order within a shape."""
    shapes = list(dict.fromkeys((s.n, s.m) for s in slots if s.compressed))
    return [i for shape in shapes for i, s in enumerate(slots) if s.compressed and (s.n, s.m) == shape]


def _pq_order(slots: list[Slot]) -> list[Slot]:
    return [slots[i] for i in _pq_positions(slots)]


def _split(flat: torch.Tensor, slots: list[Slot], size) -> dict[int, torch.Tensor]:
    out, offset = {}, 0
    for slot in slots:
        out[slot.key] = flat[offset : offset + size(slot)].clone()
        offset += size(slot)
    return out


SIZES = {"error_dict": lambda s: s.numel, "p_memory_dict": lambda s: s.n * s.rank, "q_memory_dict": lambda s: s.m * s.rank}


@COMPRESSORS.register("powersgd")
class PowerSGD(Compressor):
    in_order = True  # torch's hook all-reduces Q from the callback of P's all-reduce
    def __init__(self, cfg: CommConfig, group: dist.ProcessGroup | None = None, seed: int = 0):
        super().__init__(cfg, group, seed)
        self.state = powerSGD_hook.PowerSGDState(
            process_group=group,
            matrix_approximation_rank=cfg.powersgd_rank,
            start_powerSGD_iter=max(cfg.powersgd_warmup, 2),  # torch requires > 1 with error feedback
            random_seed=seed % 2**32,  # the initial Q matrices follow the job's seed
        )
        # warm-up steps travel as fp16, as comm.compression = "fp16" sends them: half the bytes of torch's fp32 warm-up
        # (over a 100 Mbit/s link, ten MNIST warm-up steps cost 0.6 s of a 5.7 s run in fp32), and fp16 trains as fp32 does
        self.warm_up = Float16(cfg, group, seed)
        self.wire = powersgd_factors.WIRE_DTYPES.get(cfg.powersgd_factors)  # None: fp32 through torch's own hook
        self.keys: dict[int, int] = {}  # a parameter's storage address -> its index in the model
        self.layouts: dict[int, list[Slot]] = {}  # bucket index -> its slots, as last seen
        self.pending: dict[str, dict[int, torch.Tensor]] = {}  # restored per-parameter state not yet laid out

    def attach(self, model: nn.Module) -> None:
        self.keys = {p.data_ptr(): i for i, p in enumerate(model.parameters())}

    def reduce(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        slots = self._slots(bucket)
        before = self.layouts.get(bucket.index())
        if before is not None and before != slots:
            self.pending = self._per_param({bucket.index(): before}, self.pending)
        self.layouts[bucket.index()] = slots
        if self.pending:
            self._lay_out(bucket.index(), slots, bucket.buffer())
        self.count(*self._bytes(bucket, slots))
        if self.state.iter < self.state.start_powerSGD_iter:  # warm-up: the whole gradient, cast to fp16
            self.state.maybe_increase_iter(bucket)  # (what torch's hook does in its warm-up, all-reducing fp32)
            return self.warm_up.reduce(bucket)
        if self.wire is not None:  # the matrices in the layout of P and Q the state keeps, the rest sent whole
            grads = bucket.gradients()
            matrices = [grads[i].view(slots[i].n, slots[i].m) for i in _pq_positions(slots)]
            whole = [grad for slot, grad in zip(slots, grads) if not slot.compressed]
            return powersgd_factors.reduce(self.state, bucket, self.wire, matrices, whole, sent=lambda extra: self.count(0, extra))
        return powerSGD_hook.powerSGD_hook(self.state, bucket)

    def _slots(self, bucket: dist.GradBucket) -> list[Slot]:
        slots = []
        for param, grad in zip(bucket.parameters(), bucket.gradients()):
            n = grad.shape[0] if grad.dim() else 1
            m = grad.numel() // max(n, 1)
            rank = min(n, m, self.state.matrix_approximation_rank)
            worth = powerSGD_hook._should_compress(n, m, rank, self.state.min_compression_rate)[0]
            slots.append(Slot(self.keys.get(param.data_ptr(), -1), grad.numel(), n, m, rank, bool(worth)))
        return slots

    def _bytes(self, bucket: dist.GradBucket, slots: list[Slot]) -> tuple[int, int]:
        """(fp32 bytes, bytes sent): matrices worth compressing travel as P and Q, the rest whole (torch's rule)."""
        size = bucket.buffer().element_size()
        raw = bucket.buffer().numel() * size
        if self.state.iter < self.state.start_powerSGD_iter:
            return raw, raw // 2  # fp16 (`warm_up`)
        width = self.wire.itemsize if self.wire is not None else size
        return raw, width * sum((s.n + s.m) * s.rank if s.compressed else s.numel for s in slots)

    def _per_param(self, layouts: dict[int, list[Slot]], pending: dict) -> dict[str, dict[int, torch.Tensor]]:
        """Take these buckets' state out of torch's per-bucket dicts, per parameter (added to `pending`)."""
        per_param: dict[str, dict[int, torch.Tensor]] = {name: dict(pending.get(name, {})) for name in PER_BUCKET}
        for index, layout in layouts.items():
            for name in PER_BUCKET:
                flat = getattr(self.state, name).pop(index, None)
                if flat is not None:
                    order = layout if name == "error_dict" else _pq_order(layout)
                    per_param[name].update(_split(flat, order, SIZES[name]))
        return {name: values for name, values in per_param.items() if values}

    def state_dict(self) -> dict:
        slots = {slot: getattr(self.state, slot) for slot in self.state.__slots__ if slot not in ("process_group", *PER_BUCKET)}
        saved = {name: dict(getattr(self.state, name)) for name in PER_BUCKET}
        per_param = self._per_param(self.layouts, self.pending)
        for name, values in saved.items():  # taking them out was for the copy: training goes on with the originals
            setattr(self.state, name, values)
        return {"state": slots, "per_param": {name: per_param.get(name, {}) for name in PER_BUCKET}}

    def load_state_dict(self, state: dict) -> None:
        for slot, value in state["state"].items():
            setattr(self.state, slot, value)
        for name in PER_BUCKET:
            setattr(self.state, name, {})
        self.pending = {name: dict(values) for name, values in state["per_param"].items() if values}

    def _lay_out(self, index: int, slots: list[Slot], like: torch.Tensor) -> None:
        """Put restored per-parameter state into this bucket's flat layout, where every piece is there."""
        for name in PER_BUCKET:
            values = self.pending.get(name)
            order = slots if name == "error_dict" else _pq_order(slots)
            if not values or not order or not all(s.key in values for s in order):
                continue
            getattr(self.state, name)[index] = torch.cat([values.pop(s.key).to(like) for s in order])
            if not values:
                del self.pending[name]



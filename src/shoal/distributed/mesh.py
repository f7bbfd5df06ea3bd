"""ParallelDims: the one object that owns the layout (pp x dp x fsdp x tp) and its DeviceMesh.

Every other module asks it for groups and ranks instead of computing them. The mesh is
ordered pp, dp, fsdp, tp: tensor-parallel peers are neighbours (the busiest traffic), and the
pipeline dim is outermost (the lightest). The data-parallel degree is dp x fsdp: the global
batch is dealt over those ranks only; tp and pp peers of one replica read the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from shoal.config import ParallelConfig
from shoal.errors import ShoalError

DIM_NAMES = ("pp", "dp", "fsdp", "tp")


def default_microbatches(pp: int) -> int:
    """parallel.microbatches = 0: two per stage keeps the 1F1B bubble small without tiny micro-batches."""
    return 2 * pp if pp > 1 else 1


@dataclass(frozen=True)
class ParallelDims:
    dp: int
    fsdp: int
    tp: int
    pp: int
    world: int
    microbatches: int = 1  # pipeline micro-batches per step and replica (1 without a pipeline)

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world: int) -> ParallelDims:
        """Resolve dp = 0 ("the rest") and check that the product is the world size."""
        dp, fsdp, tp, pp = cfg.dp, cfg.fsdp, cfg.tp, cfg.pp
        model_par = fsdp * tp * pp
        if dp == 0:
            if world % model_par:
                raise ShoalError(
                    f"parallel: fsdp x tp x pp = {fsdp} x {tp} x {pp} = {model_par} does not divide the {world} processes; "
                    f"make --nproc a multiple of {model_par} or change the layout"
                )
            dp = world // model_par
        if dp * model_par != world:
            raise ShoalError(
                f"parallel: dp x fsdp x tp x pp = {dp} x {fsdp} x {tp} x {pp} = {dp * model_par} but there are {world} processes; "
                f"make the product equal --nproc"
            )
        return cls(dp, fsdp, tp, pp, world, cfg.microbatches or default_microbatches(pp))

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        return self.pp, self.dp, self.fsdp, self.tp

    @property
    def dp_size(self) -> int:
        """Ranks the batch is dealt over (replicas x shards)."""
        return self.dp * self.fsdp

    @property
    def model_parallel(self) -> bool:
        """True when anything beyond plain replication (DDP) is asked for."""
        return self.fsdp > 1 or self.tp > 1 or self.pp > 1

    def describe(self) -> str:
        return " x ".join(f"{n}={s}" for n, s in zip(DIM_NAMES, self.sizes) if s > 1) or "single process"

    def coords(self, rank: int) -> dict[str, int]:
        """This rank's coordinate along every dim (row-major over pp, dp, fsdp, tp)."""
        out, rest = {}, rank
        for name, size in reversed(list(zip(DIM_NAMES, self.sizes))):
            rest, out[name] = divmod(rest, size)
        return out

    def dp_rank(self, rank: int) -> int:
        c = self.coords(rank)
        return c["dp"] * self.fsdp + c["fsdp"]

    @cached_property
    def mesh(self) -> DeviceMesh:
        """The 4-D mesh (size-1 dims included, so every name always exists). Needs the process group."""
        if dist.get_world_size() != self.world:
            raise ShoalError(f"parallel: the layout is for {self.world} processes but the job has {dist.get_world_size()}")
        return init_device_mesh("cpu" if dist.get_backend() == "gloo" else "cuda", self.sizes, mesh_dim_names=DIM_NAMES)

    def submesh(self, *names: str) -> DeviceMesh:
        return self.mesh[names if len(names) > 1 else names[0]]

    @property
    def dp_mesh(self) -> DeviceMesh:
        """The 2-D (dp, fsdp) mesh FSDP2 shards over (replicating over dp: HSDP)."""
        return self.submesh("dp", "fsdp")


def check_layout(cfg: ParallelConfig, world: int) -> ParallelDims:
    """Every layout error a user can make, before any process starts."""
    dims = ParallelDims.from_config(cfg, world)
    if dims.pp > 1:
        micro = dims.microbatches
        if cfg.pp_schedule != "gpipe" and micro < dims.pp:
            raise ShoalError(f"parallel.microbatches = {micro} must be at least parallel.pp = {dims.pp} for the {cfg.pp_schedule} schedule")
        if cfg.pp_schedule == "interleaved" and micro % dims.pp:
            raise ShoalError(f"parallel.microbatches = {micro} must be a multiple of parallel.pp = {dims.pp} for the interleaved schedule")
        if cfg.pp_speeds and len(cfg.pp_speeds) != dims.pp:
            raise ShoalError(f"parallel.pp_speeds has {len(cfg.pp_speeds)} entries but parallel.pp = {dims.pp}; give one speed per stage owner")
    elif cfg.pp_split:
        raise ShoalError(f"parallel.pp_split = {cfg.pp_split} needs parallel.pp > 1")
    return dims

"""Pure checks of a job against a world size: no process group, no files, no model weights.

`shoal train`'s preflight, `shoal deploy` and `shoal.fit` run the same functions, so a job
that deploys is a job that trains.
"""

from __future__ import annotations

import math

from shoal.config import JobConfig
from shoal.data.plan import plan_for, total_steps
from shoal.distributed.mesh import ParallelDims, check_layout
from shoal.errors import ShoalError
from shoal.launch.nodes import node_counts
from shoal.plugins import import_plugins
from shoal.train.balance import in_units, share_unit


def check_batching(cfg: JobConfig, n_train: int, world: int | ParallelDims) -> ParallelDims:
    """Reject layouts that cannot deal the batch; returns the checked layout. A batch that does not divide by the
    processes is dealt in parts one sample apart (the loss is normalised by the whole batch, so the update is exact),
    except where a pipeline fixes micro-batch shapes or each rank owns a fixed shard (partition_scope = "dataset")."""
    t = cfg.train
    dims = world if isinstance(world, ParallelDims) else check_layout(cfg.parallel, world)
    replicas = dims.dp_size  # the batch is dealt over the data-parallel ranks; tp and pp peers share theirs
    if cfg.parallel.batch_shares or cfg.parallel.balance != "none":
        check_batch_shares(cfg, dims)  # shares of any size (of pipeline units under pp): no divisibility needed
    elif t.global_batch_size % (replicas * t.grad_accum) and (dims.pp > 1 or cfg.data.partition_scope != "batch"):
        # otherwise the batch is dealt in parts that differ by one sample, and the update is still the exact batch mean
        raise ShoalError(
            f"train.global_batch_size = {t.global_batch_size} must be divisible by processes x train.grad_accum = "
            f"{replicas} x {t.grad_accum} = {replicas * t.grad_accum}; pick a multiple of {replicas * t.grad_accum}"
        )
    if dims.pp > 1:
        check_pipeline_batches(cfg, n_train, dims)
    if total_steps(cfg, plan_for(cfg, n_train, replicas)) == 0:
        raise ShoalError(
            f"train: nothing to train: {n_train} training samples give 0 steps with global_batch_size = "
            f"{t.global_batch_size}, epochs = {t.epochs}, drop_last = {cfg.data.drop_last}; raise epochs or steps, or lower the batch"
        )
    return dims


def check_batch_shares(cfg: JobConfig, dims: ParallelDims) -> None:
    """parallel.batch_shares / balance: one share per data-parallel rank, each getting samples of every full batch
    (under a pipeline: whole units of microbatches x grad_accum, train/balance.py)."""
    p, batch, replicas = cfg.parallel, cfg.train.global_batch_size, dims.dp_size
    unit = share_unit(dims, cfg.train.grad_accum)
    if unit > 1 and (batch % unit or batch // unit < replicas):
        raise ShoalError(
            f"parallel.batch_shares / balance with parallel.pp = {dims.pp}: every replica's share is a multiple of "
            f"parallel.microbatches x train.grad_accum = {unit}, so train.global_batch_size = {batch} "
            f"must be a multiple of {unit} and at least {unit * replicas} ({replicas} replicas)")
    if cfg.data.partition_scope != "batch":
        raise ShoalError("parallel.batch_shares and parallel.balance need data.partition_scope = 'batch' "
                         "(with 'dataset' each rank keeps a fixed shard, so its share of a batch cannot move)")
    if p.batch_shares and len(p.batch_shares) != replicas:
        raise ShoalError(f"parallel.batch_shares has {len(p.batch_shares)} entries; it needs one per data-parallel rank "
                         f"(dp x fsdp = {replicas})")
    if p.batch_shares:
        sizes = in_units(batch, p.batch_shares, unit)
        if 0 in sizes:
            raise ShoalError(f"parallel.batch_shares = {p.batch_shares} gives data-parallel rank {sizes.index(0)} none of the "
                             f"{batch} samples of a batch ({sizes}); raise its share or train.global_batch_size")
    if p.balance == "speed" and batch < replicas:
        raise ShoalError(f"parallel.balance = 'speed' keeps at least one sample of every batch on each data-parallel rank: "
                         f"train.global_batch_size = {batch} must be at least dp x fsdp = {replicas}")


def check_parts(cfg: JobConfig) -> None:
    """Every part the job names by name exists (after importing its plugins); an unknown one lists the choices."""
    from shoal.compress import COMPRESSORS
    from shoal.monitor import MONITORS
    from shoal.sync import SYNC

    import_plugins(cfg.plugins)
    SYNC.get(cfg.sync)
    if cfg.comm.compression != "auto":  # auto picks among the registered ones at start
        COMPRESSORS.get(cfg.comm.compression)
    for name in cfg.log.monitors:
        MONITORS.get(name)


def check_node_counts(cfg: JobConfig, n_train: int, nproc_per_node: int, min_nodes: int = 1, max_nodes: int = 1) -> None:
    """check_batching for every world size the job may run at: an elastic job can shrink or grow to any count."""
    worlds = [nproc_per_node * nodes for nodes in node_counts(min_nodes, max_nodes)]
    if len(worlds) > 1:
        check_elastic_division(cfg, worlds)
    for world in worlds:
        check_batching(cfg, n_train, world)


def check_elastic_division(cfg: JobConfig, worlds: list[int]) -> None:
    """Where the batch must divide (a pipeline, or a fixed shard per rank), one line with the one batch size that
    divides at every size an elastic job may run at: the least common multiple, not the first size's multiple."""
    t, p = cfg.train, cfg.parallel
    if p.batch_shares or p.balance != "none":
        return
    layouts = [check_layout(p, world) for world in worlds]
    if all(d.pp == 1 for d in layouts) and cfg.data.partition_scope == "batch":
        return
    need = math.lcm(*(d.dp_size * t.grad_accum for d in layouts))
    if t.global_batch_size % need:
        raise ShoalError(f"train.global_batch_size = {t.global_batch_size} must be divisible by processes x train.grad_accum at every "
                         f"size the elastic job may run at ({', '.join(map(str, worlds))} processes); pick a multiple of {need}")


def check_pipeline_batches(cfg: JobConfig, n_train: int, dims: ParallelDims) -> None:
    """A pipeline schedule fixes its micro-batch shapes at the first step: every step must split evenly."""
    micro = dims.microbatches
    local = cfg.train.global_batch_size // dims.dp_size // cfg.train.grad_accum
    if not (cfg.parallel.batch_shares or cfg.parallel.balance != "none") and local % micro:  # shares: check_batch_shares
        raise ShoalError(
            f"parallel.microbatches = {micro} must divide the per-replica batch global_batch_size / (dp x fsdp) / grad_accum = "
            f"{cfg.train.global_batch_size} / {dims.dp_size} / {cfg.train.grad_accum} = {local}"
        )
    plan = plan_for(cfg, n_train, dims.dp_size)
    short_last = n_train % cfg.train.global_batch_size and not cfg.data.drop_last and cfg.data.partition_scope == "batch"
    if short_last and total_steps(cfg, plan) >= plan.steps_per_epoch():
        raise ShoalError(
            f"data: the last batch of an epoch has {n_train % cfg.train.global_batch_size} samples, which a pipeline cannot split "
            f"like the others; set data.drop_last = true or make train.global_batch_size divide {n_train}"
        )

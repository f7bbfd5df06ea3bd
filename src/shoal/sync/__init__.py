"""Sync strategies: how replicas agree on an update. `build` picks the job's by name from the registry."""

import shoal.sync.param_server  # noqa: F401 - registers "param_server"
from shoal.sync import allreduce, average, federated  # noqa: F401 - each registers its name
from shoal.sync.base import SYNC, SyncContext, SyncStrategy


def build(ctx: SyncContext) -> SyncStrategy:
    return SYNC.get(ctx.cfg.sync)(ctx)


__all__ = ["SYNC", "SyncContext", "SyncStrategy", "build"]

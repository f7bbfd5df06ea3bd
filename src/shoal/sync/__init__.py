"""Sync strategies: how replicas agree on an update. `build` picks the job's by name from the registry."""

from shoal.sync import allreduce  # noqa: F401 - registers "allreduce"
from shoal.sync.base import SYNC, SyncContext, SyncStrategy


def build(ctx: SyncContext) -> SyncStrategy:
    return SYNC.get(ctx.cfg.sync)(ctx)


__all__ = ["SYNC", "SyncContext", "SyncStrategy", "build"]

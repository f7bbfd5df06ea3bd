"""Rank, world and process group: the one source of truth every other module is handed."""

from shoal.distributed.env import DistEnv, init_distributed, shutdown

__all__ = ["DistEnv", "init_distributed", "shutdown"]

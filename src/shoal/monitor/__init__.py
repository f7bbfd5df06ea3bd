"""Monitors: signals in every training record, chosen by name in `[log] monitors`."""

from shoal.monitor import memory  # noqa: F401 - registers "memory"
from shoal.monitor.base import MONITORS, Monitor, MonitorContext

__all__ = ["MONITORS", "Monitor", "MonitorContext"]

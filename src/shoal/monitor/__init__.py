"""Monitors: signals in every training record, chosen by name in `[log] monitors`."""

from shoal.monitor import flops, memory, system  # noqa: F401 - register "mfu", "memory", "system"
from shoal.monitor.base import MONITORS, Monitor, MonitorContext

__all__ = ["MONITORS", "Monitor", "MonitorContext"]

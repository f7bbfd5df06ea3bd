"""Gradient compression on the data-parallel all-reduce: one Compressor per method, chosen by `comm.compression` (docs/compression.md)."""

import inspect

from shoal.compress import cast, int8, none, powersgd, qsgd, topk  # noqa: F401 - each registers its methods
from shoal.compress.base import COMPRESSORS, Compressor
from shoal.compress.ddp_hook import install


def build(method: str, cfg, group=None, seed: int = 0) -> Compressor:
    """The compressor `method`, its random draws seeded from the job's seed (a plugin's own __init__ without
    a `seed` parameter is called without it)."""
    cls = COMPRESSORS.get(method)
    return cls(cfg, group, seed=seed) if "seed" in inspect.signature(cls.__init__).parameters else cls(cfg, group)


__all__ = ["COMPRESSORS", "Compressor", "build", "install"]

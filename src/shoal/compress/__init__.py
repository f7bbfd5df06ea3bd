"""Gradient compression on the data-parallel all-reduce: one Compressor per method, chosen by `comm.compression` (docs/compression.md)."""

from shoal.compress import cast, int8, none, powersgd, qsgd, topk  # noqa: F401 - each registers its methods
from shoal.compress.base import COMPRESSORS, Compressor
from shoal.compress.ddp_hook import install

__all__ = ["COMPRESSORS", "Compressor", "install"]

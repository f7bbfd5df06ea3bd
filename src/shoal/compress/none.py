"""No compression: DDP's own all-reduce, untouched (no Python on the gradient path)."""

from __future__ import annotations

from shoal.compress.base import COMPRESSORS, Compressor


@COMPRESSORS.register("none")
class NoCompression(Compressor):
    uses_hook = False

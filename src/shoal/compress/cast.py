"""fp16 and bf16: the bucket travels at half the bytes, pre-divided by the world size (as torch's fp16 hook).

torch's own bf16 hook refuses to run unless the backend is NCCL (it checks the hook's
*function name*), although gloo reduces bf16 correctly; casting here works on both.
"""

from __future__ import annotations

import torch

from shoal.compress.base import COMPRESSORS, Compressor


class CastCompressor(Compressor):
    dtype = torch.float16

    def encode(self, grads: torch.Tensor) -> torch.Tensor:
        return grads.to(self.dtype).div_(self.world)


@COMPRESSORS.register("fp16")
class Float16(CastCompressor):
    dtype = torch.float16


@COMPRESSORS.register("bf16")
class BFloat16(CastCompressor):
    dtype = torch.bfloat16

"""Evaluation under model-parallel layouts (and for language models under any layout).

Model-parallel peers must run the same forward passes together, so every replica runs the
same number of batches (short shares are padded and the padding is not scored), and only one
rank per replica scores: the holder of the output with tensor-parallel coordinate 0.
Reports loss, accuracy (per token for sequences) and, for sequences, perplexity.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from shoal.data import deal, fetch
from shoal.parallel.runtime import Layout


def _padded(indices: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    valid = len(indices)
    if valid == size:
        return indices, valid
    filler = np.zeros(size - valid, dtype=indices.dtype)
    return np.concatenate([indices, filler]), valid


@torch.no_grad()
def evaluate_layout(layout: Layout, dataset: Dataset, batch_size: int, loss_fn) -> dict[str, float]:
    """Every batch has exactly `batch_size` samples: pipeline schedules need fixed shapes, and no rank runs an empty one."""
    dims, env = layout.dims, layout.env
    layout.train(False)
    shares = deal(len(dataset), dims.dp_size, "contiguous")
    mine = shares[layout.dp_rank]
    n_batches = math.ceil(max(len(s) for s in shares) / batch_size)
    scores = layout.holds_output and dims.coords(env.rank)["tp"] == 0
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, samples, correct, scored elements
    sequences = False
    for b in range(n_batches):
        idx = mine[b * batch_size : (b + 1) * batch_size]
        idx, valid = _padded(idx, batch_size)
        x, y = fetch(dataset, idx)
        out = layout.predict(x.to(env.device), y.to(env.device))
        if out is None or not scores or valid == 0:
            continue
        out, y = out[:valid], y[:valid].to(out.device)
        sequences = y.dim() > 1
        totals[0] += float(loss_fn(out, y, reduction="sum"))
        totals[1] += valid
        totals[2] += float((out.argmax(-1) == y).sum())
        totals[3] += y.numel()
    flags = torch.tensor([float(sequences)], dtype=torch.float64)
    if env.world_size > 1:
        dist.all_reduce(totals)
        dist.all_reduce(flags)
    layout.train(True)
    loss = float(totals[0] / totals[1]) if totals[1] else float("nan")
    result = {"loss": loss, "accuracy": float(totals[2] / totals[3]) if totals[3] else float("nan")}
    if flags.item() > 0:
        result["perplexity"] = math.exp(min(loss, 50.0))
    return result

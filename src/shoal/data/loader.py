"""Turn a step's index list into tensors, split into the micro-batches of gradient accumulation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

from shoal.errors import ShoalError


@dataclass
class MicroBatch:
    inputs: torch.Tensor
    targets: torch.Tensor
    global_count: int  # samples in the whole global batch: the loss is normalised by it

    def __len__(self) -> int:
        return len(self.targets)


def check_samples(dataset: Dataset, name: str) -> None:
    """Shoal trains on (inputs, target) pairs; anything else is refused, never guessed (a Hugging Face
    (input_ids, attention_mask, labels) triple would otherwise train on the mask as the target)."""
    if isinstance(dataset, TensorDataset):
        if len(dataset.tensors) != 2:
            raise ShoalError(f"{name}: a TensorDataset of {len(dataset.tensors)} tensors; Shoal trains on (inputs, target) pairs: "
                             f"pass TensorDataset(inputs, target)")
        return
    if len(dataset) == 0:
        return
    sample = dataset[0]
    if isinstance(sample, dict):
        raise ShoalError(f"{name}: samples are dicts (keys {sorted(sample)}); Shoal trains on (inputs, target) pairs: "
                         f"return (inputs, target) from __getitem__")
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        what = f"a {type(sample).__name__} of {len(sample)}" if isinstance(sample, (tuple, list)) else f"a {type(sample).__name__}"
        raise ShoalError(f"{name}: a sample is {what}; Shoal trains on (inputs, target) pairs: return (inputs, target) from __getitem__")


def fetch(dataset: Dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch. Tensor data sets are indexed in one call; any other Dataset sample by sample."""
    if isinstance(dataset, TensorDataset):
        idx = torch.as_tensor(indices, dtype=torch.long)
        x, y = dataset.tensors[0][idx], dataset.tensors[1][idx]
        return x, y
    if len(indices) == 0:
        x0, y0 = default_collate([dataset[0]])
        return x0[:0], y0[:0]
    return tuple(default_collate([dataset[int(i)] for i in indices]))


def microbatches(dataset: Dataset, per_rank: list[np.ndarray], rank: int, accum: int, device: torch.device) -> Iterator[MicroBatch]:
    """This rank's part of one global batch as `accum` micro-batches (some may be empty at the end of an epoch)."""
    total = sum(len(p) for p in per_rank)
    for part in np.array_split(per_rank[rank], accum):
        x, y = fetch(dataset, part)
        yield MicroBatch(x.to(device, non_blocking=True), y.to(device, non_blocking=True), total)

"""Turn a step's index list into tensors, split into the micro-batches of gradient accumulation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset, default_collate

from shoal.data.batches import DictDataset, to_device
from shoal.data.parquet_rows import RankRows
from shoal.data.stream import StreamRows
from shoal.errors import ShoalError

BY_INDEX = (TensorDataset, RankRows, StreamRows)  # read by index in one call, drawing no random numbers


@dataclass
class MicroBatch:
    inputs: torch.Tensor | dict[str, torch.Tensor]  # a dict for transformers-style batches (shoal.data.batches)
    targets: torch.Tensor
    global_count: int  # samples in the whole global batch
    units: int = -1  # what the loss sums over in this micro-batch: samples, or scored tokens (a token-level LM loss)
    global_units: int = -1  # the same over the whole global batch: the loss is normalised by it

    def __post_init__(self):
        if self.units < 0:
            self.units, self.global_units = len(self.targets), self.global_count

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
    """One batch. Tensor data sets are indexed in one call; any other Dataset sample by sample. Inputs may be a dict."""
    if isinstance(dataset, TensorDataset):
        idx = torch.as_tensor(indices, dtype=torch.long)
        x, y = dataset.tensors[0][idx], dataset.tensors[1][idx]
        return x, y
    if isinstance(dataset, DictDataset):
        return dataset.take(torch.as_tensor(indices, dtype=torch.long))
    if isinstance(dataset, (RankRows, StreamRows)):
        return dataset.take(indices)
    if len(indices) == 0:
        x0, y0 = default_collate([dataset[0]])
        return ({k: v[:0] for k, v in x0.items()} if isinstance(x0, dict) else x0[:0]), y0[:0]
    return tuple(default_collate([dataset[int(i)] for i in indices]))


def targets_of(dataset: Dataset, indices: np.ndarray) -> torch.Tensor:
    """Only the targets of a batch (what a token-level loss counts to normalise), without reading inputs where possible."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1][idx]
    if isinstance(dataset, DictDataset):
        return dataset.target[idx]
    return fetch(dataset, indices)[1]


def microbatches(dataset: Dataset, per_rank: list[np.ndarray], rank: int, accum: int, device: torch.device,
                 units: Callable[[torch.Tensor], int] | None = None) -> Iterator[MicroBatch]:
    """This rank's part of one global batch as `accum` micro-batches (some may be empty at the end of an epoch).
    `units(targets)`: what the loss sums over when it is not samples (scored tokens); every rank counts the whole
    global batch from the targets, so the normalisation is the same everywhere without a collective."""
    total = sum(len(p) for p in per_rank)
    global_units = sum(int(units(targets_of(dataset, p))) for p in per_rank if len(p)) if units is not None else total
    for part in np.array_split(per_rank[rank], accum):
        x, y = fetch(dataset, part)
        n = int(units(y)) if units is not None else len(y)
        yield MicroBatch(to_device(x, device), y.to(device, non_blocking=True), total, n, global_units)

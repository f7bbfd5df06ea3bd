"""Batches as the transformers ecosystem has them: a dict of tensors (`input_ids`, `attention_mask`, `labels`, ...).

A `DictDataset` holds whole columns (from an npz, Parquet columns, or your own tensors) and gives
`(inputs, target)` pairs whose inputs are a dict: the model is called as `model(**inputs)`. The
target is what the loss compares the model's output with:

- classification: `labels`, one class per sample;
- language modelling (`task = "lm"`): `labels` (or `input_ids` when there are none) shifted by one
  to the left, padding and the last position set to -100 (ignored), so `logits[:, t]` is scored
  against token t + 1: what a transformers causal LM does inside, done here once.

Integer columns keep their dtype (as int64): token ids must reach the embedding as integers.
Sequences of different lengths are padded on the right to the longest one (`attention_mask` 0,
targets -100), so padded positions never count in the loss or in the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from shoal.errors import ShoalError

IGNORE = -100  # targets that count nowhere: padding, the last position of a sequence (transformers' convention)
KNOWN = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "labels")


def lm_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets of (samples, seq) labels: position t scores token t + 1; the last position is ignored."""
    out = torch.full_like(labels, IGNORE)
    out[:, :-1] = labels[:, 1:]
    return out


class DictDataset(Dataset):
    """Columns of equal length; sample i is `({name: column[i]}, target[i])`. The `labels` column stays in the
    inputs (a model's own loss wants it, see `call_model`); `target` is what Shoal's losses score."""

    def __init__(self, columns: Mapping[str, torch.Tensor], task: str = "classify"):
        if "input_ids" not in columns and "inputs_embeds" not in columns:
            raise ShoalError(f"data: a dict of tensors needs an 'input_ids' column (it has {', '.join(sorted(columns))})")
        sizes = {k: len(v) for k, v in columns.items()}
        if len(set(sizes.values())) > 1:
            raise ShoalError(f"data: columns differ in length ({', '.join(f'{k}: {n}' for k, n in sizes.items())}); they must match")
        self.columns = {k: torch.as_tensor(v) for k, v in columns.items()}
        self.task = task
        ids = self.columns.get("input_ids")
        if task == "lm":
            labels = self.columns.get("labels")
            if labels is None:
                labels = ids.clone()
                if "attention_mask" in self.columns:
                    labels[self.columns["attention_mask"] == 0] = IGNORE
                self.columns["labels"] = labels
            self.target = lm_targets(labels)
        else:
            if "labels" not in self.columns:
                raise ShoalError("data: a classification data set of dicts needs a 'labels' column (or set data.task = 'lm')")
            self.target = self.columns["labels"]

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.columns.items()}, self.target[i]

    def take(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Many samples in one indexing per column."""
        return {k: v[idx] for k, v in self.columns.items()}, self.target[idx]

    @property
    def seq_len(self) -> int:
        return int(self.columns["input_ids"].shape[1]) if self.columns["input_ids"].dim() > 1 else 1


class DictSamples(Dataset):
    """A data set whose samples are dicts (a `datasets.Dataset` with torch or python values, your own): as pairs."""

    def __init__(self, dataset: Dataset, task: str):
        self.dataset, self.task = dataset, task

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        sample = {k: torch.as_tensor(v) for k, v in self.dataset[int(i)].items() if k in KNOWN or isinstance(v, torch.Tensor)}
        if self.task == "lm":
            labels = sample.get("labels", sample["input_ids"]).clone()
            if "attention_mask" in sample and "labels" not in sample:
                labels[sample["attention_mask"] == 0] = IGNORE
            sample["labels"] = labels
            return sample, lm_targets(labels[None])[0]
        return sample, sample["labels"]


def dict_task(sample: Mapping) -> str:
    """What a dict sample trains by default: labels shaped like input_ids are tokens (lm), else classes."""
    labels, ids = sample.get("labels"), sample.get("input_ids")
    if labels is None:
        return "lm"
    return "lm" if ids is not None and np.shape(labels) == np.shape(ids) and np.ndim(labels) >= 1 else "classify"


def as_pairs(dataset: Dataset | None, task: str = "auto") -> Dataset | None:
    """A data set of dict samples as (dict, target) pairs; anything else unchanged."""
    if dataset is None or isinstance(dataset, (DictDataset, DictSamples)) or len(dataset) == 0:
        return dataset
    sample = dataset[0]
    if not isinstance(sample, Mapping):
        return dataset
    if "input_ids" not in sample:
        raise ShoalError(f"data: samples are dicts without 'input_ids' (keys {sorted(sample)}); give input_ids and labels, "
                         "or return (inputs, target) pairs")
    return DictSamples(dataset, dict_task(sample) if task == "auto" else task)


def is_dict_data(dataset: Dataset | None) -> bool:
    return isinstance(dataset, (DictDataset, DictSamples)) or getattr(dataset, "dict_inputs", False)


def to_device(x, device: torch.device):
    if isinstance(x, Mapping):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def batch_len(x) -> int:
    if isinstance(x, Mapping):
        return len(next(iter(x.values())))
    return len(x)


def call_model(model: nn.Module, x, with_labels: bool = False):
    """The model on one batch: `model(**x)` for dict batches (labels only when the model's own loss is wanted)."""
    if isinstance(x, Mapping):
        return model(**(x if with_labels else {k: v for k, v in x.items() if k != "labels"}))
    return model(x)


def pad(rows: list, value: int) -> np.ndarray:
    """Rows of different lengths as one (rows, longest) int64 array, padded on the right with `value`."""
    longest = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), longest), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.asarray(r, dtype=np.int64)
    return out


def columns_from_rows(columns: Mapping[str, list], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Columns of per-row sequences (Parquet list columns) as padded tensors, with an attention mask when padding was needed."""
    out: dict[str, torch.Tensor] = {}
    lengths = None
    for name, rows in columns.items():
        first = rows[0] if len(rows) else None
        if first is not None and np.ndim(first) >= 1:
            if lengths is None:
                lengths = [len(r) for r in rows]
            fill = IGNORE if name == "labels" else (0 if name == "attention_mask" else pad_id)
            out[name] = torch.as_tensor(pad(list(rows), fill))
        else:
            arr = np.asarray(rows)
            out[name] = torch.as_tensor(arr.astype(np.int64) if arr.dtype.kind in "biu" else arr.astype(np.float32))
    if lengths is not None and "attention_mask" not in out and "input_ids" in out and len(set(lengths)) > 1:
        longest = out["input_ids"].shape[1]
        out["attention_mask"] = (torch.arange(longest)[None, :] < torch.as_tensor(lengths)[:, None]).long()
    return out


def keep_integers(array: np.ndarray) -> torch.Tensor:
    """A column as a tensor: integers as int64 (token ids, labels), everything else float32."""
    return torch.as_tensor(np.ascontiguousarray(array.astype(np.int64) if array.dtype.kind in "biu" else array.astype(np.float32)))


# --- user files: an npz of named arrays, Parquet columns ---------------------------------------------

EVAL_PREFIX = "eval_"  # npz: `eval_input_ids`, `eval_labels`, ... hold the evaluation split


def _limit(n: int, limit: int) -> int:
    return min(n, limit) if limit else n


def _split(columns: dict[str, torch.Tensor], eval_fraction: float, seed: int) -> tuple[dict, dict]:
    n = len(next(iter(columns.values())))
    order = np.random.default_rng([seed & 0xFFFFFFFF, 7]).permutation(n)  # the seeded held-out split of datasets.py
    n_eval = int(round(n * eval_fraction))
    ev, tr = torch.as_tensor(order[:n_eval]), torch.as_tensor(order[n_eval:])
    return {k: v[tr] for k, v in columns.items()}, {k: v[ev] for k, v in columns.items()}


def check_columns(columns: dict[str, torch.Tensor], where: str) -> None:
    ids = columns.get("input_ids")
    if ids is None:
        raise ShoalError(f"{where}: no 'input_ids' array/column; a data set of named arrays needs input_ids (and labels or data.task = 'lm')")
    if ids.is_floating_point() or ids.dim() != 2:
        raise ShoalError(f"{where}: 'input_ids' must be integer token ids shaped (samples, seq_len); it is {ids.dtype} shaped {tuple(ids.shape)}")
    if len(ids) and int(ids.min()) < 0:
        raise ShoalError(f"{where}: 'input_ids' holds the negative token id {int(ids.min())}; token ids are 0..vocab-1")
    mask = columns.get("attention_mask")
    if mask is not None and tuple(mask.shape) != tuple(ids.shape):
        raise ShoalError(f"{where}: 'attention_mask' is shaped {tuple(mask.shape)} but 'input_ids' {tuple(ids.shape)}; they must match")


def dict_splits(train: dict[str, torch.Tensor], eval_: dict[str, torch.Tensor] | None, task: str, where: str, seed: int,
                eval_fraction: float, limit_train: int, limit_eval: int) -> tuple[DictDataset, DictDataset | None, str]:
    """Columns as train/eval DictDatasets (a seeded held-out split when no eval columns are given); returns the task too."""
    check_columns(train, where)
    if task == "auto":
        labels = train.get("labels")
        task = "lm" if labels is None or tuple(labels.shape) == tuple(train["input_ids"].shape) else "classify"
    if eval_ is None:
        train, eval_ = _split(train, eval_fraction, seed)
    else:
        check_columns(eval_, where)
        if set(eval_) != set(train):
            raise ShoalError(f"{where}: evaluation arrays {sorted(eval_)} differ from training arrays {sorted(train)}; give the same names")
    cut = lambda cols, limit: {k: v[: _limit(len(v), limit)] for k, v in cols.items()}  # noqa: E731
    tr, ev = DictDataset(cut(train, limit_train), task), DictDataset(cut(eval_, limit_eval), task)
    return tr, (ev if len(ev) else None), task


def npz_columns(z, read, cfg_task: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """An npz holding named arrays (`input_ids`, `attention_mask`, `labels`, ...; `eval_*` for evaluation)."""
    names = [k for k in z.files if not k.startswith(EVAL_PREFIX)]
    train = {k: keep_integers(read(k)) for k in names}
    eval_names = [k for k in z.files if k.startswith(EVAL_PREFIX)]
    eval_ = {k.removeprefix(EVAL_PREFIX): keep_integers(read(k)) for k in eval_names} if eval_names else None
    return train, eval_


def vocab_and_classes(ds: DictDataset, other: DictDataset | None) -> int:
    """lm: the vocabulary (largest token id + 1); classify: the classes (largest label + 1)."""
    sets = [d for d in (ds, other) if d is not None]
    if ds.task == "lm":
        return max(int(d.columns["input_ids"].max()) for d in sets if len(d)) + 1
    labels = torch.cat([d.target.flatten() for d in sets])
    if len(labels) and int(labels.min()) < 0:
        raise ShoalError("data: labels must be class codes 0..C-1; found a negative label")
    return int(labels.max()) + 1


def check_model_takes(model: nn.Module, dataset: Dataset | None, name: str) -> None:
    """Dict batches call `model(**batch)`: a forward without those parameters is refused with one line, before training."""
    if not is_dict_data(dataset) or len(dataset) == 0:
        return
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    keys = [k for k in dataset[0][0] if k != "labels"]
    missing = [k for k in keys if k not in params]
    if missing:
        raise ShoalError(f"{name}: samples are dicts (keys {sorted(dataset[0][0])}), so the model is called as model(**batch), but "
                         f"{type(model).__name__}.forward takes no {missing[0]!r}; return (inputs, target) pairs from __getitem__ "
                         "or give the model those parameters")

"""Inputs of a run whose model takes dict batches (`hf:` models trained on named arrays): an .npz of `input_ids`,
optionally `attention_mask`, `token_type_ids` and `labels` (the training file's `eval_*` arrays are ignored), or a
Parquet file with an `input_ids` list column. Targets as in training: next tokens for language models (padding
not scored), `labels` for classifiers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shoal.data.batches import EVAL_PREFIX, IGNORE, KNOWN, check_columns, columns_from_rows, keep_integers, lm_targets
from shoal.errors import ShoalError

TAKEN = ("input_ids", "attention_mask", "token_type_ids")  # what the model is called with; labels become the target


def _columns(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as err:  # numpy raises several types for a bad file
            raise ShoalError(f"--data: '{path}' is not a readable .npz file ({err})") from None
        names = [k for k in z.files if not k.startswith(EVAL_PREFIX)]
        unknown = [k for k in names if k not in KNOWN]
        if unknown:
            raise ShoalError(f"--data '{path}': array '{unknown[0]}' is none of {', '.join(KNOWN)} (the model takes named arrays)")
        return {k: keep_integers(z[k]) for k in names}
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:
        raise ShoalError(f"--data: cannot read '{path}' as Parquet ({err})") from None
    return columns_from_rows({k: table.column(k).to_pylist() for k in table.column_names if k in KNOWN})


def named_inputs(columns: dict[str, torch.Tensor], source, where: str) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Columns -> (the model's inputs, the target or None), checked against what the model was trained on."""
    check_columns(columns, where)
    ids = columns["input_ids"]
    longest = source.spec.input_shape[0]
    if ids.shape[1] > longest:
        raise ShoalError(f"{where}: sequences of {ids.shape[1]} tokens; the model was trained on at most {longest}")
    if source.task == "lm" and len(ids) and int(ids.max()) >= source.spec.num_classes:
        raise ShoalError(f"{where}: 'input_ids' holds token {int(ids.max())}, outside the vocabulary 0..{source.spec.num_classes - 1}")
    x = {k: v for k, v in columns.items() if k in TAKEN}
    labels = columns.get("labels")
    if source.task == "lm":
        if labels is None:
            labels = ids.clone()
            if "attention_mask" in x:
                labels[x["attention_mask"] == 0] = IGNORE
        return x, lm_targets(labels)
    if labels is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= source.spec.num_classes):
        raise ShoalError(f"{where}: labels must be class codes 0..{source.spec.num_classes - 1}")
    return x, labels


def read_named(path: Path, source, rows: tuple[int, int] | None = None):
    from shoal.infer.inputs import Inputs, take

    x, y = named_inputs(_columns(path), source, f"--data '{path}'")
    if rows is not None:
        x, y = take(x, *rows), (y[rows[0] : rows[1]] if y is not None else None)
    return Inputs(x, y, path)

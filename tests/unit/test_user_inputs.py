"""User data (.npz, parquet with a manifest) and user models (a factory named in the job file), end to end in one process."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from torch.utils.data import TensorDataset

from shoal.cli import main
from shoal.distributed import init_distributed
from shoal.train.metrics import evaluate


def train_in_process(job: Path, out: Path, *sets: str) -> list[dict]:
    with pytest.raises(SystemExit) as done:
        main(["train", str(job), "--nproc", "1", "--out", str(out), *[a for s in sets for a in ("--set", s)]])
    assert done.value.code == 0
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    y = g.integers(0, 3, n)
    x = g.standard_normal((n, 5)).astype(np.float32) + 3 * y[:, None]
    return x, y


def test_npz_with_its_own_eval_split(tmp_path):
    x, y = blobs(300)
    xe, ye = blobs(90, seed=1)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_eval=xe, y_eval=ye)
    job = tmp_path / "job.toml"
    job.write_text(f'[data]\nname = "npz"\npath = "{tmp_path / "d.npz"}"\n'
                   '[optimizer]\nname = "adamw"\nlr = 0.01\n[train]\nglobal_batch_size = 30\nepochs = 5\n')
    records = train_in_process(job, tmp_path / "run")
    final = [r for r in records if r["kind"] == "eval"][-1]
    assert final["accuracy"] > 0.9


def test_parquet_manifest_as_written_by_shoal_prep(tmp_path):
    x, y = blobs(400)
    data = tmp_path / "prepped"
    data.mkdir()
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)]).assign(label=y)
    shards = []
    for i, part in enumerate(np.array_split(np.arange(len(frame)), 3)):
        name = f"part-{i:05d}.parquet"
        frame.iloc[part].to_parquet(data / name)
        shards.append(name)
    (data / "manifest.json").write_text(json.dumps({"format": "shoal-parquet-v1", "shards": shards, "shard_rows": [134, 133, 133],
                                                    "rows": 400, "features": [f"f{i}" for i in range(5)], "label": "label", "label_classes": 3}))
    job = tmp_path / "job.toml"
    job.write_text(f'[data]\nname = "parquet"\npath = "{data}"\n[optimizer]\nname = "adamw"\nlr = 0.01\n[train]\nglobal_batch_size = 32\nepochs = 5\n')
    records = train_in_process(job, tmp_path / "run")
    assert [r for r in records if r["kind"] == "eval"][-1]["accuracy"] > 0.9


def test_model_factory_named_in_the_job_file(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import math, torch
        def wide(input_shape, num_classes, width=8):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), width),
                                       torch.nn.GELU(), torch.nn.Linear(width, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    job = tmp_path / "job.toml"
    job.write_text('[model]\nname = "my_models:wide"\nkwargs = {width = 24}\n[data]\nname = "digits"\n[train]\nsteps = 5\n')
    train_in_process(job, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert state["1.weight"].shape == (24, 64) and state["3.weight"].shape == (10, 24)


def test_quality_metrics_agree_with_scikit_learn():
    env = init_distributed()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g)
    y = torch.randint(0, 4, (500,), generator=g)
    model = torch.nn.Linear(6, 4)
    got = evaluate(model, TensorDataset(x, y), env, num_classes=4, batch_size=64, loss_fn=torch.nn.functional.cross_entropy)
    pred = model(x).argmax(1).detach().numpy()
    p, r, f, _ = precision_recall_fscore_support(y.numpy(), pred, average="macro", zero_division=0)
    assert got["accuracy"] == pytest.approx(accuracy_score(y.numpy(), pred), abs=1e-6)
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f), abs=1e-6)
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(model(x), y).item(), rel=1e-5)

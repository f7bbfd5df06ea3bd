"""A small `shoal prep`-style Parquet output (three shard files, row groups of 40) for the Parquet reading tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FEATURES = [f"f{j}" for j in range(6)]
BOUNDS = [(0, 250), (250, 420), (420, 600)]  # rows of each shard file
ROW_GROUP = 40


def write_shards(out: Path, n: int = 600) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    x = g.standard_normal((n, len(FEATURES))).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    shards = []
    for i, (a, b) in enumerate(BOUNDS):
        pq.write_table(pa.table({**{c: x[a:b, j] for j, c in enumerate(FEATURES)}, "label": y[a:b]}), out / f"part-{i}.parquet",
                       row_group_size=ROW_GROUP)
        shards.append(f"part-{i}.parquet")
    (out / "manifest.json").write_text(json.dumps({"shards": shards, "features": FEATURES, "label": "label"}))
    return out


def job(path: Path, data: str = "", rest: str = "") -> str:
    """A job on those shards: an MLP, batches of 32, two epochs (`rest` replaces [train] and [checkpoint])."""
    return (f'name = "pq"\nseed = 3\n[model]\nname = "mlp"\nhidden = [16]\n[data]\nname = "parquet"\npath = "{path}"\n{data}'
            '[optimizer]\nlr = 0.1\n' + (rest or '[train]\nglobal_batch_size = 32\nepochs = 2\nlog_every = 5\n[checkpoint]\nevery = 0\n'))

"""Two small trained runs every inference and serving test reads: an MLP on digits and a gpt on Shakespeare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

MLP = """name = "infer-mlp"
[model]
name = "mlp"
hidden = [16]
[data]
name = "digits"
limit_train = 300
[train]
global_batch_size = 32
steps = 4
[checkpoint]
every = 4
"""

GPT = """name = "infer-gpt"
[model]
name = "gpt"
layers = 2
dim = 32
heads = 2
[data]
name = "shakespeare"
seq_len = 16
limit_train = 128
limit_eval = 16
[train]
global_batch_size = 16
steps = 2
[checkpoint]
every = 2
"""


def train(tmp: Path, name: str, text: str) -> Path:
    """`shoal train` in this process (one worker), then leave no process group behind."""
    from shoal.job.command import train_command

    job = tmp / f"{name}.toml"
    job.write_text(text)
    train_command(job, 1, tmp / name, [], False)
    if dist.is_initialized():
        dist.destroy_process_group()
    return tmp / name


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("infer-runs")
    found = {"mlp": train(tmp, "mlp", MLP), "gpt": train(tmp, "gpt", GPT)}
    from sklearn.datasets import load_digits

    from shoal.data.text import corpus

    d = load_digits()
    x = (d.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)[:101]  # 101 rows: shards of 51 and 50, or 34, 34, 33
    np.savez(tmp / "digits.npz", x=x, y=d.target[:101])
    codes, _ = corpus()
    np.savez(tmp / "text.npz", x=codes[: 16 * 9].reshape(9, 16), y=codes[1 : 16 * 9 + 1].reshape(9, 16))
    found.update(digits=tmp / "digits.npz", text=tmp / "text.npz", tmp=tmp)
    return found

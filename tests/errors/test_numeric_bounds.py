"""Category: numbers out of range. Every numeric field has the bounds torch accepts; floats are finite."""

from __future__ import annotations

import pytest

from error_contract import BASE, job_file, refused

CASES = [
    # (--set override, words the one line must contain)
    ("dist.timeout_s=inf", ["dist.timeout_s", "finite"]),
    ("dist.timeout_s=nan", ["dist.timeout_s", "finite"]),
    ("dist.timeout_s=1e300", ["dist.timeout_s", "less than or equal"]),
    ("dist.timeout_s=0", ["dist.timeout_s", "greater than 0"]),
    ("seed=1180591620717411303424", ["seed", "less than or equal"]),  # 2**70
    ("seed=-1", ["seed", "greater than or equal to 0"]),
    ("train.threads=1099511627776", ["train.threads"]),  # 2**40
    ("train.threads=-2", ["train.threads"]),
    ("model.hidden=[-5]", ["model.hidden.0", "greater than or equal to 1"]),
    ("model.hidden=[0]", ["model.hidden.0"]),
    ("model.hidden=[64, 0.5]", ["model.hidden.1"]),
    ("model.channels=[-1, 32]", ["model.channels.0"]),
    ("model.channels=[16]", ["model.channels", "at least 2 items"]),
    ("model.channels=[16, 32, 64]", ["model.channels", "at most 2 items"]),
    ("model.layers=0", ["model.layers"]),
    ("model.dim=1099511627776", ["model.dim"]),
    ("model.heads=-4", ["model.heads"]),
    ("optimizer.betas=[2.0, 0.5]", ["optimizer.betas.0", "less than 1"]),
    ("optimizer.betas=[0.9, -0.1]", ["optimizer.betas.1"]),
    ("optimizer.lr=inf", ["optimizer.lr", "finite"]),
    ("optimizer.lr=nan", ["optimizer.lr", "finite"]),
    ("optimizer.lr=0", ["optimizer.lr"]),
    ("optimizer.eps=-1e-8", ["optimizer.eps"]),
    ("optimizer.momentum=1.5", ["optimizer.momentum"]),
    ("optimizer.weight_decay=-inf", ["optimizer.weight_decay"]),
    ("train.steps=1180591620717411303424", ["train.steps", "out of range"]),
    ("train.global_batch_size=0", ["train.global_batch_size"]),
    ("train.clip_grad_norm=inf", ["train.clip_grad_norm", "finite"]),
    ("schedule.min_lr_ratio=2", ["schedule.min_lr_ratio"]),
    ("data.synthetic_samples=1099511627776", ["data.synthetic_samples"]),
    ("data.eval_fraction=1.0", ["data.eval_fraction"]),
    ("health.straggler_threshold=inf", ["health.straggler_threshold"]),
    ("parallel.pp_speeds=[1.0, -1.0]", ["parallel.pp_speeds.1"]),
    ("parallel.batch_shares=[1.0, inf]", ["parallel.batch_shares"]),
    ("comm.topk_ratio=0", ["comm.topk_ratio"]),
    ("nproc=100000", ["nproc"]),
]


@pytest.mark.parametrize("override,words", CASES, ids=[c[0] for c in CASES])
def test_out_of_range_number_is_refused(tmp_path, capsys, override, words):
    job = job_file(tmp_path, BASE)
    refused(["train", str(job), "--out", str(tmp_path / "run"), "--set", override], words, tmp_path, capsys)

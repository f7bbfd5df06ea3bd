"""Module-level functions the batch-share tests run inside spawned workers (spawn pickles them by name).

One job trains every case in turn; each rank returns the samples it computed at every step
(so a test sees the shares were really used) and rank 0 also the gathered model.pt and the
balance records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import shoal
from shoal.config import deep_merge as merged
from shoal.data import load
from shoal.job.worker import run_job
from shoal.models import build_model
from shoal.train import balance

# BASE is the digits job of tests/job_files.py (an MLP of 16 hidden units on 300 digits images).
BASE = {"seed": 3, "model": {"name": "mlp", "hidden": [16]}, "data": {"name": "digits", "limit_train": 300, "limit_eval": 100},
        "train": {"global_batch_size": 64, "epochs": 2, "log_every": 1, "threads": 1}, "checkpoint": {"at_end": False}}
CASES = {
    # 300 = 9 x 32 + 12: the last batch splits 9 / 3, and accumulation leaves rank 1 one empty micro-batch there
    "shares-24-8-accum-clip": {"parallel": {"batch_shares": [24, 8]}, "data": {"partition": "round_robin"},
                               "train": {"global_batch_size": 32, "grad_accum": 2, "clip_grad_norm": 0.5},
                               "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True}},
    "shares-3-1-adamw-cosine": {"parallel": {"batch_shares": [3, 1]}, "data": {"partition": "random"},
                                "train": {"grad_accum": 2, "clip_grad_norm": 1.0},
                                "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
                                "schedule": {"name": "cosine", "warmup_steps": 2}},
    "shares-3-1-fsdp": {"parallel": {"fsdp": 2, "batch_shares": [3, 1]}, "optimizer": {"name": "sgd", "lr": 0.1}},
    # rank 1 throttled to half speed (the test's env): from 1:3 the shares move towards 2:1 (threshold 0: at every log step)
    "speed-moving": {"parallel": {"balance": "speed", "batch_shares": [1, 3], "balance_threshold": 0.0},
                     "data": {"partition": "random"}, "optimizer": {"name": "adamw", "lr": 0.01}},
}


def config(overrides: dict) -> shoal.JobConfig:
    return shoal.JobConfig.model_validate(merged(BASE, overrides))


def single_overrides(name: str) -> dict:
    """The same job on one process: no parallel section (shares are per rank)."""
    return {k: v for k, v in CASES[name].items() if k != "parallel"}


def initial_params(name: str) -> dict[str, torch.Tensor]:
    cfg = config(CASES[name])
    splits = load(cfg.data, cfg.seed)
    return build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed).state_dict()


def run_cases(root: str, cases: list[tuple[str, dict]], throttles: dict[str, str] | None = None) -> dict:
    """`throttles` names the slowed ranks (SHOAL_TEST_SLOW_FACTOR) of a case where they differ from the launch's:
    a replica is pp ranks apart under a pipeline but adjacent under tensor parallelism."""
    counted: list[int] = []
    count = balance.Balance.count
    balance.Balance.count = lambda self, batches: counted.append(count(self, batches)) or counted[-1]
    results = {}
    launched = os.environ.get("SHOAL_TEST_SLOW_FACTOR")
    for name, overrides in cases:
        out = Path(root) / name
        counted.clear()
        throttle = (throttles or {}).get(name, launched)
        os.environ.pop("SHOAL_TEST_SLOW_FACTOR", None) if throttle is None else os.environ.__setitem__("SHOAL_TEST_SLOW_FACTOR", throttle)
        run_job(config(overrides), str(out), overwrite=True)
        results[name] = {"samples": list(counted)}
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            results[name].update(params=torch.load(out / "model.pt"), balance=[r for r in records if r["kind"] == "balance"])
    return results


def launch_throttled(throttle: dict[str, str], root: str, cases: list[tuple[str, dict]], nproc: int,
                     throttles: dict[str, str] | None = None) -> dict:
    """run_cases in `nproc` launched workers that inherit `throttle` (the simulated slow device), restored afterwards:
    the single-process references, run in the test process, never see it."""
    from shoal.launch.local import launch_local

    saved = {k: os.environ.get(k) for k in throttle}
    os.environ.update(throttle)
    try:
        return launch_local(run_cases, (root, cases, throttles), nproc=nproc)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

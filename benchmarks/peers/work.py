"""The equal work, exported from Shoal itself: what `shoal train` would feed its workers for this job.

Written once per harness run into a work file every peer loads (common.Work): Shoal's data tensors,
the initial weights its model builder made from the job's seed, every step's global batch as
dataset indices from Shoal's batch plan (rank r's contiguous part first), and the optimizer,
threads and seed. Same model, weights, data order, batches, steps and threads by construction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from shoal.config import JobConfig, load_job
from shoal.data import load as load_data
from shoal.data.plan import plan_for, total_steps
from shoal.models import build_model

JOB = Path(__file__).resolve().parents[2] / "examples" / "mnist_cnn.toml"


def job(steps: int, log_every: int | None = None) -> tuple[JobConfig, list[str]]:
    """The MNIST CNN job for `steps` steps at a constant learning rate (the peers run no schedule), and its overrides;
    log_every None keeps the job file's."""
    overrides = [f"train.steps={steps}", "schedule.name='constant'", "schedule.warmup_steps=0", "data.limit_eval=1000"]
    overrides += [f"train.log_every={log_every}"] if log_every else []
    return load_job(JOB, overrides), overrides


def export(cfg: JobConfig, path: Path, nproc: int = 2) -> None:
    splits = load_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed)
    plan = plan_for(cfg, len(splits.train), nproc)
    spe = plan.steps_per_epoch()
    batches = [np.concatenate(plan.step(*divmod(k, spe))) for k in range(total_steps(cfg, plan))]
    if len({len(b) for b in batches}) != 1 or cfg.data.partition != "contiguous":
        raise SystemExit("work.py: the peers take equal contiguous halves of full batches; keep partition contiguous, batches full")
    x, y = splits.train.tensors
    xe, ye = splits.eval.tensors
    threads = cfg.train.threads or max((os.cpu_count() or 1) // nproc, 1)  # what shoal.train.process gives each worker
    meta = {"seed": cfg.seed, "lr": cfg.optimizer.lr, "weight_decay": cfg.optimizer.weight_decay, "threads": threads,
            "channels": list(cfg.model.channels), "hidden": 128,  # shoal.models builds the cnn with its default width
            "dropout": cfg.model.dropout}
    torch.save({"x": x.contiguous(), "y": y.contiguous(), "x_eval": xe.contiguous(), "y_eval": ye.contiguous(),
                "batches": torch.as_tensor(np.stack(batches), dtype=torch.long),
                "init": {k: v.detach().clone() for k, v in model.state_dict().items()}, "meta": json.dumps(meta)}, path)

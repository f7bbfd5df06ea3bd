"""What the parameter-server tests run inside spawned workers (spawn pickles these by name)."""

from __future__ import annotations

import json
import os

import dp_workers
import torch

import shoal
from job_files import digits_mlp
from shoal.checkpoint import Checkpointer
from shoal.config import load_job, to_toml
from shoal.data import describe, load
from shoal.job.worker import run_job
from shoal.models import build_model

# Both optimizers, accumulation, global-norm clipping, a warm-up + cosine schedule, an uneven last batch (195 = 3 x 64 + 3).
EXACT = {name: dp_workers.CASES[name] for name in ("sgd_accum_clip", "adamw_accum_clip_cosine")}
NO_CLIP = {"optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9}, "train": {"grad_accum": 2}}
# The whole digits training set (1437 images), 3 epochs of 45 steps.
TRAIN = {"data": {"limit_train": 0, "limit_eval": 0}, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
         "train": {"global_batch_size": 32, "epochs": 3, "log_every": 5}}
SLOW = {"SHOAL_TEST_SLOW_FACTOR": "1:3.0", "SHOAL_TEST_SAMPLE_S": "0.0003"}  # worker 1 three times slower per sample


merged = dp_workers.merged


def ps(mode: str, servers: int = 1, **keys) -> dict:
    return {"sync": "param_server", "ps": {"servers": servers, "mode": mode, **keys}}


def train_case(spec: dict | str, out: str | None = None, env: dict | None = None) -> dict:
    """One fit of `spec` (overrides of dp_workers.BASE, or a job file): this rank's weights and eval metrics."""
    if isinstance(spec, str):  # a job file, trained as `shoal train` workers do
        return run_job(load_job(spec), out)
    os.environ.update(env or {})
    try:
        cfg = shoal.JobConfig.model_validate(dp_workers.merged(dp_workers.BASE, spec))
        splits = load(cfg.data, cfg.seed)
        model = build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed)
        result = shoal.fit(model, splits.train, splits.eval, cfg, num_classes=splits.spec.num_classes, out=out,
                           show_progress=False, summary=False)
    finally:
        for key in env or {}:
            os.environ.pop(key, None)
    return {"params": {k: v.detach().clone() for k, v in result.model.state_dict().items()}, "eval": result.eval,
            "steps": result.steps}


def run(cases: dict[str, tuple]) -> dict:
    """cases: name -> arguments of train_case."""
    return {name: train_case(*args) for name, args in cases.items()}


_trained_calls = 0


def nan_once(scores, target, reduction="sum"):
    """train.loss of the rollback test: cross-entropy, except that with SHOAL_TEST_NAN_AT="RANK:STEP" that rank's
    STEP-th training forward pass returns NaN, once per process (a transient fault: the replayed step is finite)."""
    global _trained_calls
    loss = torch.nn.functional.cross_entropy(scores, target, reduction=reduction)
    if not torch.is_grad_enabled():  # evaluation
        return loss
    _trained_calls += 1
    rank, _, step = os.environ.get("SHOAL_TEST_NAN_AT", "-1:0").partition(":")
    if os.environ.get("RANK") == rank and _trained_calls == int(step):
        return loss * float("nan")
    return loss


REJOIN_JOB = digits_mlp("ps-rejoin-resume", """
[train]
global_batch_size = 36
steps = 60
[ps]
mode = "async"
rejoin = true
[checkpoint]
every = 20
""", top='sync = "param_server"\n')


class _Empty:
    """A stand-in for the server's state (nothing in these tests loads it)."""

    def state_dict(self) -> dict:
        return {}


def run_with_a_rejoin_checkpoint(tmp_path, world: int, step: int = 40, server_state: bool = True):
    """A run directory as a `world`-process ps.rejoin run of REJOIN_JOB leaves it at its checkpoint of `step` (written
    by the server, the last rank; without its state if not `server_state`), without running it; returns (job file, run
    directory)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    job = tmp_path / "job.toml"
    job.write_text(REJOIN_JOB)
    config, out = load_job(job), tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"run_id": "r1", "origin": "job"}))
    (out / "config.toml").write_text(to_toml(config))
    spec = describe(config.data, config.seed)
    model = build_model(config.model, spec.input_shape, spec.num_classes, config.seed)
    meta = {"layout": "single process", "job": config.name, "ps": {"rejoin": True, "mode": "async", "workers": world - 1, "servers": 1}}
    Checkpointer(out / "checkpoints", world - 1, world, run_id="r1").save_alone(step, [model], meta, {"ps_server": _Empty()} if server_state else {})
    return job, out

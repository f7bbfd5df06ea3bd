"""Module-level functions the data-parallel tests run inside spawned workers (spawn pickles them by name)."""

from __future__ import annotations

import shoal
from shoal.config import deep_merge as merged
from shoal.data import load
from shoal.models import build_model

# Each case: overrides on top of BASE. Chosen to cover both optimizers, accumulation, clipping,
# every partition strategy, a last batch smaller than the world (a rank with nothing to do),
# and a learning-rate schedule.
BASE = {
    "seed": 3,
    "model": {"name": "mlp", "hidden": [32]},
    "data": {"name": "digits", "limit_train": 195, "limit_eval": 100},
    "train": {"global_batch_size": 64, "epochs": 2, "log_every": 1, "eval_every": 0},
}
LONGER = {"data": {"limit_train": 0}, "train": {"epochs": 3}}  # enough steps for lossy compression to show
CASES = {
    "plain": LONGER,
    "sgd_accum_clip": {"optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True},
                       "train": {"grad_accum": 2, "clip_grad_norm": 0.5}, "data": {"partition": "round_robin"}},
    "adamw_accum_clip_cosine": {"optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
                                "schedule": {"name": "cosine", "warmup_steps": 2},
                                "train": {"grad_accum": 2, "clip_grad_norm": 1.0}, "data": {"partition": "random"}},
    "sgd_contiguous_cnn": {"model": {"name": "cnn", "channels": [4, 8]}, "optimizer": {"name": "sgd", "lr": 0.1},
                           "data": {"partition": "contiguous"}},
}
HOOK_CASES = {hook: {**LONGER, "comm": {"hook": hook, "powersgd_rank": 2, "powersgd_warmup": 2}} for hook in ("fp16", "bf16", "powersgd")}


def train_case(overrides: dict) -> dict:
    cfg = shoal.JobConfig.model_validate(merged(BASE, overrides))
    splits = load(cfg.data, cfg.seed)
    model = build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed)
    result = shoal.fit(model, splits.train, splits.eval, cfg, show_progress=False, summary=False)
    return {"params": {k: v.detach().clone() for k, v in result.model.state_dict().items()}, "eval": result.eval}


def run_cases(names: list[str]) -> dict:
    table = {**CASES, **HOOK_CASES}
    return {name: train_case(table[name]) for name in names}

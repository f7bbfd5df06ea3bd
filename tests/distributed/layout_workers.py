"""Module-level functions the layout tests run inside spawned workers (spawn pickles them by name).

One job trains every case of a world size in turn (the process group is made once), writes
each run directory, and rank 0 returns each case's per-step losses, eval and gathered model.pt.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import shoal
from shoal.config import deep_merge as merged
from shoal.job.worker import run_job

MODELS = {
    "gpt": {
        "model": {"name": "gpt", "layers": 2, "dim": 32, "heads": 4, "mlp_ratio": 4},
        "data": {"name": "shakespeare", "seq_len": 16, "limit_train": 256, "limit_eval": 32},
        "optimizer": {"name": "sgd", "lr": 0.3, "momentum": 0.9, "weight_decay": 0.01},  # Adam would magnify 1e-7 noise on ~0 gradients
        "train": {"global_batch_size": 16, "steps": 4, "clip_grad_norm": 0.5},
    },
    "mlp": {
        "model": {"name": "mlp", "hidden": [32, 32, 32]},
        "data": {"name": "digits", "limit_train": 256, "limit_eval": 64},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "train": {"global_batch_size": 32, "steps": 4, "clip_grad_norm": 0.5},
    },
}
COMMON = {"seed": 5, "train": {"log_every": 1, "threads": 1}}

LAYOUTS_2 = {
    "fsdp2": {"fsdp": 2},
    "tp2": {"tp": 2},
    "pp2-gpipe": {"pp": 2, "pp_schedule": "gpipe"},
    "pp2-1f1b": {"pp": 2, "pp_schedule": "1f1b"},
    "pp2-interleaved": {"pp": 2, "pp_schedule": "interleaved"},
    "fsdp2-checkpointing-meta": {"fsdp": 2, "activation_checkpointing": True, "meta_init": True},
}
GPT_ONLY = {"fsdp2-checkpointing-meta"}  # meta init needs the model's init_parameter(); the mlp has none
LAYOUTS_4 = {
    "fsdp4": {"fsdp": 4},
    "tp4": {"tp": 4},
    "dp2-tp2": {"dp": 2, "tp": 2},
    "fsdp2-tp2": {"fsdp": 2, "tp": 2},
    "pp2-dp2": {"pp": 2, "dp": 2},
    "pp2-tp2": {"pp": 2, "tp": 2},
    "pp2-fsdp2": {"pp": 2, "fsdp": 2},
    "dp2-fsdp2": {"dp": 2, "fsdp": 2},
}


MODELS["gpt_tied"] = merged(MODELS["gpt"], {"model": {"tie_head": True}})

# Cases beyond the layout list (2 processes): other ways to ask for a layout, each still equal to
# the single-process run of its model. Values are whole overrides, not just the parallel section.
EXTRA_2 = {
    ("mlp", "tp2-plan-from-job"): {"parallel": {"tp": 2, "tp_plan": {"3": "colwise", "5": "rowwise"}}},
    ("mlp", "fsdp2-accum"): {"parallel": {"fsdp": 2}, "train": {"grad_accum": 2}},
    ("mlp", "pp2-time-balanced"): {"parallel": {"pp": 2, "pp_balance": "time"}},
    ("mlp", "pp2-unequal-speeds"): {"parallel": {"pp": 2, "pp_speeds": [3.0, 1.0]}},
    ("gpt", "pp2-split-by-name-accum"): {"parallel": {"pp": 2, "pp_split": ["layers.1"]}, "train": {"grad_accum": 2}},
    ("mlp", "user-parallelize-hook"): {"parallel": {"parallelize": "layout_workers:shard_whole_model"}},
    ("gpt_tied", "tp2-tied-head"): {"parallel": {"tp": 2}},
}


def shard_whole_model(model, mesh, cfg):
    """A user's `parallelize(model, mesh, config)` hook: one FSDP unit over the data-parallel dims."""
    from torch.distributed.fsdp import fully_shard

    return fully_shard(model, mesh=mesh["dp", "fsdp"])


def config(model: str, overrides: dict) -> shoal.JobConfig:
    return shoal.JobConfig.model_validate(merged(MODELS[model], COMMON, overrides))


def read_run(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "losses": [r["loss"] for r in records if r["kind"] == "train"],
        "eval": next(r for r in records if r["kind"] == "eval"),
        "train": [r for r in records if r["kind"] == "train"],
        "layout": [r for r in records if r["kind"] == "layout"],
        "params": torch.load(out / "model.pt"),
    }


def run_cases(root: str, cases: list[tuple[str, str, dict]]) -> dict:
    """Train every (model, case name, overrides); rank 0 returns the runs, others None."""
    results = {}
    for model, name, overrides in cases:
        out = Path(root) / f"{model}-{name}"
        run_job(config(model, overrides), str(out), overwrite=True)
        if torch.distributed.get_rank() == 0:
            results[(model, name)] = read_run(out)
    return results if torch.distributed.get_rank() == 0 else None

"""The Python API: `shoal.fit(model, train_set, eval_set, config)`.

The same call works in a plain script (a world of one), in a script run under `torchrun`,
and in the workers `shoal train` spawns (shoal.job.worker builds a job file's model and data,
then calls this).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from shoal import config as config_mod
from shoal import sync as sync_mod
from shoal.checkpoint import read_marker
from shoal.config import JobConfig
from shoal.data import check_samples
from shoal.data.batches import DictDataset, as_pairs, check_model_takes, is_dict_data
from shoal.distributed import DistEnv, init_distributed
from shoal.distributed.mesh import check_layout
from shoal.errors import ShoalError, speaks_api
from shoal.job.checks import check_batching
from shoal.plugins import import_plugins
from shoal.report import write_report
from shoal.run_start import describe_origin, run_complete, start_run
from shoal.train.losses import build_loss
from shoal.train.optim import build_optimizer, build_scheduler
from shoal.train.process import tune_process as tune
from shoal.train.progress import print_summary
from shoal.train.trainer import FitResult, LossFn, Trainer


def as_config(config: JobConfig | dict | str | Path | None, overrides: list[str] = ()) -> JobConfig:
    if isinstance(config, JobConfig):
        return config_mod.validate(config_mod.apply_overrides(config.model_dump(), list(overrides))) if overrides else config
    if isinstance(config, (str, Path)):
        return config_mod.load_job(config, overrides)
    return config_mod.validate(config_mod.apply_overrides(config or {}, list(overrides)))


def _infer_classes(*datasets: Dataset | None) -> int:
    labels = [d.tensors[-1] for d in datasets if isinstance(d, TensorDataset)]
    labels += [d.columns["input_ids"] if d.task == "lm" else d.target for d in datasets if isinstance(d, DictDataset)]
    if not labels:
        raise ShoalError("fit(): pass num_classes= when the data sets are not TensorDatasets")
    return int(torch.cat(labels).max()) + 1


def _model_classes(model: nn.Module, task: str) -> int | None:
    """A transformers model says what it scores: its vocabulary (lm) or its labels."""
    config = getattr(model, "config", None)
    value = getattr(config, "vocab_size" if task == "lm" else "num_labels", None) if config is not None else None
    return value if isinstance(value, int) and value > 0 else None


def _write_own_report(path: Path) -> None:
    """Every run directory gets its report. A full disk is the usual one-line error; any other failure is a bug of the
    page's, not of the training: it is one warning, since failing here would restart a finished job into the same failure."""
    kept = "the model (model.pt) and the checkpoints are saved"
    try:
        write_report([path], path / "report.html", kept=kept)
    except ShoalError:
        raise
    except Exception as err:  # noqa: BLE001 - see the docstring
        print(f"warning: {path / 'report.html'} was not written ({type(err).__name__}: {err}); {kept}; `shoal report {path}` "
              "tries again (please report this as a bug)", file=sys.stderr)


@speaks_api
def fit(model: nn.Module, train_set: Dataset, eval_set: Dataset | None = None, config: JobConfig | dict | str | Path | None = None,
        *, num_classes: int | None = None, loss_fn: LossFn | None = None, out: str | Path | None = None,
        overwrite: bool = False, overrides: list[str] = (), show_progress: bool = True, summary: bool = True,
        resume: bool = False, tune_process: bool = False, _model_from_job: bool = False, _run_id: str | None = None) -> FitResult:
    """Train `model` over however many processes launched this script, as the config's layout and sync say.

    Each sample must be an `(inputs, target)` pair, or a dict with `input_ids` (and `attention_mask`, `labels`, ...):
    the model is then called as `model(**batch)` (shoal.data.batches). Without `loss_fn`, `train.loss` picks the loss
    (shoal.train.losses; `auto`: token-level LM loss for token labels, else cross-entropy); a `loss_fn(output, target,
    reduction="sum")` of yours gets the model's scores (`train.output_key` of a dict or ModelOutput) and must return
    the sum over the samples (the trainer normalises it by the global batch). The
    returned model is the unwrapped module. With `out`, checkpoints go to OUT/checkpoints;
    `resume=True` (and any restart by the launcher) continues from the newest complete one, on
    this run's world size and layout. `tune_process=True` also sets torch's thread count and the
    C allocator's thresholds for this process (what `shoal train` workers do); by default fit
    leaves the caller's process settings alone.
    """
    cfg = as_config(config, overrides)
    import_plugins(cfg.plugins)
    train_set, eval_set = as_pairs(train_set, cfg.data.task), as_pairs(eval_set, cfg.data.task)  # dict samples: (dict, target)
    task = cfg.data.task if cfg.data.task != "auto" else getattr(train_set, "task", "classify")
    check_model_takes(model, train_set, "train_set")
    if loss_fn is None:
        loss_fn = build_loss(cfg.train.loss, task, cfg.train.output_key, default=F.cross_entropy if task != "lm" and not is_dict_data(train_set) else None)
    check_samples(train_set, "train_set")
    if eval_set is not None:
        check_samples(eval_set, "eval_set")
    env = init_distributed(cfg.dist.backend, cfg.dist.timeout_s)
    if tune_process:
        tune(cfg)
    strategy = sync_mod.SYNC.get(cfg.sync)  # param_server: its training group is the workers (every rank calls new_group)
    group = strategy.training_group(cfg)
    dims = check_batching(cfg, len(train_set), check_layout(cfg.parallel, group.size))  # the one layout of this worker
    sync = sync_mod.build(sync_mod.SyncContext(cfg, env, dims, group))
    classes = num_classes or _model_classes(model, task) or _infer_classes(train_set, eval_set)
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    origin = None if _model_from_job else describe_origin(model, train_set, eval_set)
    start = start_run(cfg, env, out, overwrite, resume, restarted, _run_id, origin)  # locks, checks; writes nothing yet
    checkpoints, resume_from, run_dir = start.checkpoints, start.resume_from, start.run_dir
    if resume_from is not None:
        marker = read_marker(resume_from)
        if resume and not restarted:  # on every rank: a parameter server left alone would wait for its workers forever
            _refuse_complete(marker, sync.total_steps(sync.batch_plan(len(train_set), train_set)), out, run_dir)
        sync.check_checkpoint(cfg, env.world_size, marker, resume_from)  # every rank: all refuse together
        sync.before_resume(marker)
    if run_dir is not None:
        run_dir.write_config(config_mod.to_toml(cfg))
    torch.manual_seed(cfg.seed + env.rank)  # dropout and other noise differ per rank, reproducibly
    try:
        if not sync.trains:  # a parameter server: it answers the workers' pushes and trains nothing
            steps, wall = sync.serve(model, train_set, checkpoints, resume_from, build_optimizer, build_scheduler)
            return FitResult(model, steps, env.world_size, wall, 0.0, float("nan"))
        trainer = Trainer(cfg, replace(env, world_size=group.size), dims, sync, model, train_set, eval_set, classes, run_dir, loss_fn,
                          show_progress, checkpoints, resume_from, group)
        result = trainer.fit()
        state = trainer.layout.full_state_dict()  # a collective: every rank takes part; rank 0 gets the whole model
        if run_dir is not None:
            run_dir.save_model(state)
            _write_own_report(run_dir.path)
    finally:
        if run_dir is not None:
            run_dir.close()  # also when training failed: the directory's lock goes with this call, not the process
    if summary and env.is_main:
        print_summary(summary_rows(cfg, env, result))
    return result


def _refuse_complete(marker: dict, total: int, out, run_dir) -> None:
    """resume=True of a run at its last step: say so (as `shoal train --resume` does) rather than train 0 steps."""
    step = int(marker.get("step", 0))
    if step >= total:
        if run_dir is not None:
            run_dir.close()  # releases the lock; nothing was written
        raise run_complete(out, step, total)


def summary_rows(cfg: JobConfig, env: DistEnv, r: FitResult) -> list[tuple[str, str]]:
    rows = [("job", cfg.name), ("processes", f"{env.world_size} ({env.backend}, {env.device.type})"), ("steps", str(r.steps)),
            ("wall time", f"{r.wall_s:.1f} s"), ("training time", f"{r.train_s:.1f} s (no evaluation, no checkpoints)"),
            ("training throughput", f"{r.samples_per_s:,.0f} samples/s"), ("final train loss", f"{r.train_loss:.4f}")]
    rows += [(f"eval {k}", f"{v:.4f}") for k, v in r.eval.items()]
    if r.run_dir:
        rows.append(("run directory", r.run_dir))
    return rows

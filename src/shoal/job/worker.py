"""What every worker of `shoal train` runs for a job file (under Shoal's launcher or torchrun)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shoal.api import fit
from shoal.config import JobConfig
from shoal.data import load as load_data
from shoal.errors import ShoalError
from shoal.models import build_model, one_line
from shoal.models.gpt import lm_loss
from shoal.train.process import tune_process


def run_job(cfg: JobConfig, out: str | None, overwrite: bool = False, resume: bool = False,
            run_id: str | None = None) -> dict[str, Any]:
    """Build the job's data and model, then train them with `fit`: the job file defines the model. `run_id`: the
    launcher's (every attempt of one job shares it); None lets rank 0 decide."""
    tune_process(cfg)  # a worker owns its process; a library caller of fit keeps theirs
    splits = load_data(cfg.data.model_copy(update={"read": cfg.data_read()}), cfg.seed)  # Parquet: per rank where the plan allows
    with torch.device("meta") if cfg.parallel.meta_init else contextlib.nullcontext():  # shards are materialized later
        model = build_model(cfg.model, splits.spec.input_shape, splits.spec.num_classes, cfg.seed)
    if cfg.train.loss != "auto" or splits.spec.dict_inputs:
        loss_fn = None  # train.loss (and data.task) decide: shoal.train.losses
    else:
        loss_fn = lm_loss if splits.spec.task == "lm" and cfg.data.name == "shakespeare" else None if splits.spec.task == "lm" else F.cross_entropy
    if cfg.data.task == "auto" and splits.spec.task == "lm":
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"task": "lm"})})  # what the data said it is
    result = fit(model, splits.train, splits.eval, cfg, num_classes=splits.spec.num_classes, loss_fn=loss_fn, out=out,
                 overwrite=overwrite, resume=resume, _model_from_job=True, _run_id=run_id)
    return {"eval": result.eval, "samples_per_s": result.samples_per_s, "wall_s": result.wall_s, "steps": result.steps}


def worker_main(cfg_dict: dict[str, Any], out: str | None, overwrite: bool, resume: bool = False,
                run_id: str | None = None) -> dict[str, Any]:
    """Entry point of a spawned worker; user errors come back as a value so the CLI can print one line. Any other
    exception is a failure of the worker (a restart may follow): its traceback goes to RUN/logs/rank-N.log and its
    last line to the launcher, through the error file torch's elastic agent reads."""
    die_with_parent()
    try:
        return run_job(JobConfig.model_validate(cfg_dict), out, overwrite, resume, run_id)
    except ShoalError as err:
        return {"error": str(err)}
    except Exception as err:
        summary = failure_summary(err, out, int(os.environ.get("RANK", "0")))
        raise WorkerFailure(summary) from None  # the agent's error file then holds this one line


class WorkerFailure(Exception):
    """What the launcher prints of a worker's unexpected exception (launch/local.py drops the class name)."""


def failure_summary(err: BaseException, out: str | None, rank: int) -> str:
    """One line for a worker's unexpected exception: its own last line, and where its full traceback went."""
    summary = one_line(err)
    if out is not None:
        log = Path(out) / "logs" / f"rank-{rank}.log"
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(f"--- rank {rank} on {socket.gethostname()}, pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                f.write("".join(traceback.format_exception(err)))
            summary += f" (full traceback in {log})"
        except OSError:
            pass
    return summary


def _die_by_sigint(signum, frame) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def die_with_parent() -> None:
    """Linux: this worker gets SIGKILL when its launcher dies, even by SIGKILL (no orphans training on). Ctrl-C ends
    it as a signal does, without a KeyboardInterrupt traceback: the launcher prints the one line."""
    signal.signal(signal.SIGINT, _die_by_sigint)
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        parent = os.getppid()
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before the call
            os.kill(os.getpid(), signal.SIGKILL)

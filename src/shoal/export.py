"""`shoal export`: a checkpoint's weights as the plain state_dict model.pt holds, with no process group.

A job's run rebuilds its model from config.toml and loads into it; a `shoal.fit` run (run.json
says the model came from the API, so no config can rebuild it) is read from the checkpoint alone.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from shoal.checkpoint import latest_checkpoint, load_model_weights, read_marker
from shoal.config import load_job
from shoal.data import describe
from shoal.errors import ShoalError, check_output_file
from shoal.models import build_model
from shoal.run_dir import atomic_write_bytes, read_run_info


def _resolve(path: Path) -> tuple[Path, Path]:
    """(checkpoint dir, its run directory) from either a checkpoint or a run directory."""
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise ShoalError(f"export: run directory '{path}' has no complete checkpoint")
        path = latest
    read_marker(path)
    return path, path.parent.parent


def checkpoint_model_state(ckpt: Path) -> dict[str, torch.Tensor]:
    """The `model` entries of a DCP checkpoint, whole, without a model to load into."""
    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(str(ckpt)), planner=_EmptyStateDictLoadPlanner(keys={"model"}),
                     no_dist=True)
    return state.get("model", {})


def _job_model_state(ckpt: Path, config: Path) -> dict[str, torch.Tensor]:
    if not config.is_file():
        raise ShoalError(f"export: '{config}' not found; the checkpoint must sit in its run directory (RUN/checkpoints/step-N)")
    cfg = load_job(config)
    spec = describe(cfg.data, cfg.seed)
    model = build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)
    return load_model_weights(ckpt, model).state_dict()


def export_checkpoint(checkpoint: Path, out: Path) -> Path:
    check_output_file(out)
    ckpt, run = _resolve(Path(checkpoint))
    if read_run_info(run).get("origin") == "api":
        state = checkpoint_model_state(ckpt)
    else:
        state = _job_model_state(ckpt, run / "config.toml")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    return out

"""`shoal export`: a checkpoint's weights as the plain state_dict model.pt holds, with no process group."""

from __future__ import annotations

from pathlib import Path

import torch

from shoal.checkpoint import latest_checkpoint, load_model_weights, read_marker
from shoal.config import load_job
from shoal.data import describe
from shoal.errors import ShoalError
from shoal.models import build_model


def _resolve(path: Path) -> tuple[Path, Path]:
    """(checkpoint dir, the run's config.toml) from either a checkpoint or a run directory."""
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise ShoalError(f"export: run directory '{path}' has no complete checkpoint")
        path = latest
    read_marker(path)
    config = path.parent.parent / "config.toml"
    if not config.is_file():
        raise ShoalError(f"export: '{config}' not found; the checkpoint must sit in its run directory (RUN/checkpoints/step-N)")
    return path, config


def export_checkpoint(checkpoint: Path, out: Path) -> Path:
    ckpt, config = _resolve(Path(checkpoint))
    cfg = load_job(config)
    spec = describe(cfg.data, cfg.seed)
    model = build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)
    load_model_weights(ckpt, model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(out)
    return out

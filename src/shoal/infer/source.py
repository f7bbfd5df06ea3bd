"""What `shoal infer` and `shoal serve` load: a run directory or one checkpoint, rebuilt from its config.toml.

A run directory's model.pt (the final weights) wins over its checkpoints; a checkpoint
directory (RUN/checkpoints/step-N) is read through DCP, so a checkpoint written under any
layout loads into any inference layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from shoal.checkpoint import latest_checkpoint, load_model_weights, read_marker
from shoal.config import JobConfig, load_job
from shoal.data import DataSpec, describe
from shoal.errors import ShoalError
from shoal.models import build_model
from shoal.run_dir import read_run_info


@dataclass(frozen=True)
class Source:
    """Where the weights come from: `weights` is model.pt or a DCP checkpoint directory."""

    run: Path
    weights: Path
    cfg: JobConfig
    spec: DataSpec

    @property
    def is_checkpoint(self) -> bool:
        return self.weights.is_dir()

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def is_gpt(self) -> bool:
        return self.cfg.model.name == "gpt"


def resolve(path: str | Path, what: str = "infer") -> Source:
    """A run directory or a checkpoint directory -> Source; every mistake is one line naming the path."""
    path = Path(path)
    if not path.exists():
        raise ShoalError(f"{what}: '{path}' not found; give a run directory or RUN/checkpoints/step-N")
    if (path / "config.toml").is_file():
        run = path
        if (path / "model.pt").is_file():
            weights = path / "model.pt"
        else:
            weights = latest_checkpoint(path / "checkpoints")
            if weights is None:
                raise ShoalError(f"{what}: run directory '{path}' has neither model.pt nor a complete checkpoint")
    elif path.parent.name == "checkpoints" and (path / ".metadata").exists():
        read_marker(path)
        run, weights = path.parent.parent, path
    else:
        raise ShoalError(f"{what}: '{path}' is neither a run directory (config.toml) nor a checkpoint (RUN/checkpoints/step-N)")
    if read_run_info(run).get("origin") == "api":
        raise ShoalError(f"{what}: '{run}' was trained through shoal.fit, so no job file can rebuild its model; "
                         "load model.pt into your model yourself")
    config = run / "config.toml"
    if not config.is_file():
        raise ShoalError(f"{what}: '{config}' not found; a checkpoint must sit in its run directory")
    cfg = load_job(config)
    cfg = cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"meta_init": False})})
    return Source(run, weights, cfg, describe(cfg.data, cfg.seed))


def build(source: Source, load: bool = True) -> nn.Module:
    """The run's model in eval mode; with `load`, its trained weights (without `load`: call load_into after splitting)."""
    model = build_model(source.cfg.model, source.spec.input_shape, source.spec.num_classes, source.cfg.seed)
    if load:
        load_into(source, model)
    return model.eval()


def load_into(source: Source, model: nn.Module) -> nn.Module:
    """Whole weights into a whole model, or a DCP checkpoint into any (tensor-parallel or stage) module."""
    if source.is_checkpoint:
        return load_model_weights(source.weights, model)
    state = torch.load(source.weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model

"""Training: the loop, optimizer and schedule, quality metrics, progress display."""

from shoal.train.metrics import evaluate
from shoal.train.optim import build_optimizer, build_scheduler
from shoal.train.trainer import FitResult, Trainer

__all__ = ["FitResult", "Trainer", "build_optimizer", "build_scheduler", "evaluate"]

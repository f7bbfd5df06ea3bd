"""Shoal: take a PyTorch training job beyond one machine."""

from shoal.api import fit
from shoal.config import JobConfig, load_job
from shoal.errors import ShoalError
from shoal.train.trainer import FitResult, Trainer

__all__ = ["FitResult", "JobConfig", "ShoalError", "Trainer", "fit", "load_job"]
__version__ = "0.1.0"

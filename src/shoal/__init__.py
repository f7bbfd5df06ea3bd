"""Shoal: take a PyTorch training job beyond one machine.

Names are imported on first use, so `shoal prep` and `shoal --help` do not pay for torch.
"""

from importlib import import_module

__version__ = "0.1.0"
_EXPORTS = {
    "fit": "shoal.api",
    "JobConfig": "shoal.config",
    "load_job": "shoal.config",
    "ShoalError": "shoal.errors",
    "FitResult": "shoal.train.trainer",
    "Trainer": "shoal.train.trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")

"""Batch inference (`shoal infer`): a trained run's model over many inputs, replicated or split, and gpt text
generation with a key-value cache."""

from shoal.infer.command import infer_command
from shoal.infer.generate import generate
from shoal.infer.output import read_outputs
from shoal.infer.source import Source, build, resolve

__all__ = ["Source", "build", "generate", "infer_command", "read_outputs", "resolve"]

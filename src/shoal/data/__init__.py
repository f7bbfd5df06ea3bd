"""Data: sources, partitioning across ranks, and per-step batches."""

from shoal.data.datasets import DataSpec, Splits, describe, load
from shoal.data.loader import MicroBatch, fetch, microbatches
from shoal.data.partition import deal
from shoal.data.plan import BatchPlan

__all__ = ["BatchPlan", "DataSpec", "MicroBatch", "Splits", "deal", "describe", "fetch", "load", "microbatches"]

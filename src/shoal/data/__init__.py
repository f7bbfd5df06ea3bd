"""Data: sources, partitioning across ranks, and per-step batches."""

from shoal.data.datasets import DataSpec, Splits, describe, load
from shoal.data.loader import MicroBatch, check_samples, fetch, microbatches
from shoal.data.partition import deal
from shoal.data.plan import BatchPlan, plan_for, total_steps

__all__ = ["BatchPlan", "DataSpec", "MicroBatch", "check_samples", "Splits", "deal", "describe", "fetch", "load", "microbatches", "plan_for", "total_steps"]

"""Distributed data preprocessing on Dask: statistics, integration, cleaning, reduction, transformation.

run_prep fits a pipeline (TOML) on its sources and writes Parquet shards with a manifest
that `shoal train` reads; the fitted parameters are saved so `--apply` transforms new data
identically.
"""

from shoal.prep.pipeline import PrepResult, run_prep

__all__ = ["PrepResult", "run_prep"]

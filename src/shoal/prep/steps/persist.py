"""Persist: materialize the frame once so later fit passes stop redoing earlier work (op "persist";
"checkpoint", its first name, still works in existing pipeline files)."""

from __future__ import annotations

from typing import Literal

import dask.dataframe as dd

from shoal.prep.steps.base import Step, StepContext


class Persist(Step):
    """Write the frame to Parquet in the run's scratch space and continue from there.

    Every fit pass streams the data from the sources again (that keeps memory bounded);
    after costly steps (parsing CSV, joins, deduplication) a persist step makes the later
    passes read compact Parquet instead. store = "memory" persists in RAM instead, for
    data that fits. The scratch files are deleted before the output is published.
    """

    op: Literal["persist", "checkpoint"]
    store: Literal["disk", "memory"] = "disk"

    def apply(self, frame, params, ctx: StepContext):
        if self.store == "memory" or ctx.scratch is None:
            return frame.persist()
        path = ctx.scratch / f"persist-{len(list(ctx.scratch.glob('persist-*')))}"
        frame.to_parquet(path, write_index=False, write_metadata_file=False)
        return dd.read_parquet(path)

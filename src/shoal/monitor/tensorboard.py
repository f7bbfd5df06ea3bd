"""TensorBoard scalars (`[log] tensorboard = true`): every number of the training and evaluation records, as it is logged.

Why: TensorBoard is what users already watch while a job runs; metrics.jsonl stays the record.
Written by rank 0 into RUN_DIR/tensorboard with torch's SummaryWriter (the tensorboard package
writes the event files): `train/loss`, `train/samples_per_s`, `eval/accuracy`, ... against the step.
"""

from __future__ import annotations

import math
from pathlib import Path

from shoal.errors import ShoalError

KINDS = ("train", "eval")


class Scalars:
    def __init__(self, run_path: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ShoalError("log.tensorboard = true needs the tensorboard package: pip install 'shoal[tensorboard]' "
                             "(or set log.tensorboard = false)") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_path) / "tensorboard"))

    def write(self, record: dict) -> None:
        kind, step = record.get("kind"), record.get("step")
        if kind not in KINDS or step is None:
            return
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()

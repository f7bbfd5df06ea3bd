"""The next step's micro-batches, fetched in a background thread while this step computes.

The batch plan fixes every step's samples in advance, so the next batch can be read early.
A batch is used only if it was fetched for exactly the indices the step asks for (shares can
change between steps); otherwise it is fetched again in the foreground. Only index-based data
sets are fetched ahead by default (`data.prefetch = "auto"`: tensors, and Parquet rows read per rank or
streamed, whose reading then happens in that thread too): a Dataset of the user's may draw
random numbers in `__getitem__`, and a second thread would change their order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from torch.utils.data import Dataset

from shoal.data.loader import BY_INDEX


def wanted(mode: str, dataset: Dataset) -> bool:
    return mode == "on" or (mode == "auto" and isinstance(dataset, BY_INDEX))


class Prefetcher:
    def __init__(self, enabled: bool):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shoal-prefetch") if enabled else None
        self.pending: tuple[bytes, Future] | None = None

    @staticmethod
    def key(indices: np.ndarray, total: int) -> bytes:
        return np.asarray(indices, dtype=np.int64).tobytes() + total.to_bytes(8, "little")

    def take(self, key: bytes, load: Callable[[], list]) -> list:
        """This step's batches: the prefetched ones when they are for the same indices, else loaded now."""
        pending, self.pending = self.pending, None
        if pending is not None and pending[0] == key:
            return pending[1].result()
        if pending is not None:
            pending[1].cancel()
        return load()

    def ahead(self, key: bytes, load: Callable[[], list]) -> None:
        if self.pool is not None:
            self.pending = (key, self.pool.submit(load))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

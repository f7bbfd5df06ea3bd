"""What `shoal infer` asks of every worker, as one picklable value (the elastic agent spawns the workers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InferJob:
    source: str  # run directory or checkpoint
    data: str | None  # inputs (None when generating)
    staging: str  # where shards go before the output directory is renamed into place
    batch: int = 64
    rows: int = 0  # inputs in all (known to the launcher, which checked them): each replica reads only its shard
    split: str | None = None  # None (replicated) | "pp" | "tp"
    microbatches: int = 0  # pp: micro-batches per batch (0 = the number of stages)
    prompt: str | None = None  # --generate
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    samples: int = 1  # continuations of the prompt; sample i draws from seed + i, whoever generates it
    kv_cache: bool = True
    prepack: str = "auto"  # replicated, on CPU: linear layers packed for oneDNN: auto | on | off (shoal.infer.prepack)

    @property
    def generating(self) -> bool:
        return self.prompt is not None

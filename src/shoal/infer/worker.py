"""One inference worker: replicated (a whole model, a contiguous shard of the inputs) or one part of a split model.

Replicas never talk to each other; split workers form a process group and run the training code's
layouts (tensor parallel without sequence sharding; pipeline stages under the GPipe schedule).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from shoal.data.batches import batch_len
from shoal.errors import ShoalError
from shoal.infer.generate import encode, generate
from shoal.infer.inputs import read, take
from shoal.infer.job import InferJob
from shoal.infer.output import write_shard
from shoal.infer.predict import forward_batches, predictions, scores
from shoal.infer.prepack import prepack_linears, sample_for
from shoal.infer.shards import shard_range
from shoal.infer.source import build, resolve


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def worker_main(job: InferJob) -> dict:
    """Entry of a spawned worker; user errors come back as a value so the command prints one line."""
    try:
        with torch.no_grad():  # not set_grad_enabled: one process runs this in the caller's own process
            return split_worker(job) if job.split else replicated_worker(job)
    except ShoalError as err:
        return {"error": str(err)}


def replicated_worker(job: InferJob) -> dict:
    rank, world = rank_and_world()
    source = resolve(job.source)
    model = build(source)
    if job.generating:
        start, stop = shard_range(job.samples, world, rank)
        prompt = encode(job.prompt)
        started = time.perf_counter()
        rows = [generate(model, prompt, job.max_new_tokens, source.spec.num_classes, job.temperature, job.top_k, job.seed + i,
                         cache=job.kv_cache)[0] for i in range(start, stop)]
        tokens = torch.stack(rows).numpy() if rows else np.zeros((0, prompt.shape[1] + job.max_new_tokens), dtype=np.int64)
        compute_s = time.perf_counter() - started
        write_shard(Path(job.staging), rank, {"tokens": tokens})
        return {"rows": stop - start, "compute_s": compute_s}
    key = source.cfg.train.output_key
    timed = min(job.batch, 256)  # the batch size it runs (a larger one costs per sample about what 256 does)
    note = prepack_linears(model, sample_for(source.spec, timed), key, job.prepack, batches=(timed,))
    start, stop = shard_range(job.rows, world, rank)
    inputs = read(job.data, source, (start, stop))  # only this replica's shard
    started = time.perf_counter()
    out = forward_batches(model, inputs.x, job.batch, source.spec.num_classes, key)
    compute_s = time.perf_counter() - started
    write_shard(Path(job.staging), rank, {"outputs": out.numpy(), "predictions": predictions(out)})
    return {"rows": stop - start, "compute_s": compute_s, "prepack": note}


def split_layout(source, job: InferJob, sample: torch.Tensor, microbatches: int):
    """The training layouts, for inference: every rank builds the whole model, keeps its part, and loads it
    (a DCP checkpoint straight into the part: any training layout's checkpoint loads into any split)."""
    from shoal.distributed import init_distributed
    from shoal.distributed.mesh import ParallelDims
    from shoal.infer.source import load_into
    from shoal.parallel import build as build_layout

    env = init_distributed()
    world = env.world_size
    parallel = {"tp": world, "sequence_parallel": False} if job.split == "tp" else \
        {"pp": world, "pp_schedule": "gpipe", "microbatches": microbatches, "pp_balance": "layers"}
    cfg = source.cfg.model_copy(update={"parallel": source.cfg.parallel.model_validate({**parallel, "dp": 1})})
    dims = ParallelDims.from_config(cfg.parallel, world)
    model = build(source, load=not source.is_checkpoint)
    layout = build_layout(model, env, cfg, dims, sample, lambda m, s: m)
    if source.is_checkpoint:
        for module in layout.modules:
            load_into(source, module)
    layout.train(False)
    if hasattr(layout, "micro_loss"):  # the schedule scores each micro-batch; inference has no loss to compute
        layout.micro_loss.loss_fn = lambda out, target, reduction="sum": out.new_zeros(())
    return env, layout


def _pad_rows(x, rows: int):
    """x with its first sample repeated up to `rows` samples (a tensor, or every column of a dict)."""
    if isinstance(x, dict):
        return {k: _pad_rows(v, rows) for k, v in x.items()}
    return torch.cat([x, x[:1].expand(rows - len(x), *x.shape[1:])])


def _writes(layout, env) -> bool:
    return layout.holds_output and layout.dims.coords(env.rank)["tp"] == 0


def split_worker(job: InferJob) -> dict:
    import torch.distributed as dist

    source = resolve(job.source)
    _, world = rank_and_world()
    if job.generating:
        return _split_generate(source, job)
    inputs = read(job.data, source)
    micro = job.microbatches or world
    batch = max(job.batch - job.batch % micro, micro) if job.split == "pp" else job.batch
    env, layout = split_layout(source, job, take(inputs.x, 0, batch), micro if job.split == "pp" else 0)
    outputs = []
    started = time.perf_counter()
    for i in range(0, len(inputs), batch):
        x = take(inputs.x, i, i + batch)
        valid = batch_len(x)
        if valid < batch and job.split == "pp":  # the schedule's shapes are fixed: pad the last batch, drop the padding
            x = _pad_rows(x, batch)
        out = layout.predict(x, torch.zeros(batch_len(x)))
        if out is not None:
            outputs.append(scores(out, source.spec.num_classes, source.cfg.train.output_key)[:valid])
    if _writes(layout, env):
        out = torch.cat(outputs)
        write_shard(Path(job.staging), 0, {"outputs": out.numpy(), "predictions": predictions(out)})
    compute_s = time.perf_counter() - started
    dist.barrier()
    return {"rows": len(inputs) if _writes(layout, env) else 0, "compute_s": compute_s}


def _split_generate(source, job: InferJob) -> dict:
    """tp: every rank runs the cached generation on its heads (outputs are replicated). pp with the cache: each
    stage keeps the keys and values of its own blocks and the new positions pass stage to stage by send/recv
    (`pipeline_cached`); without it, the stages recompute the whole sequence each step under the GPipe schedule,
    right-padded to a fixed length (causal attention never looks right). Either way the last stage's logits
    decide the token, which every rank then receives, so all ranks extend the same sequence."""
    import torch.distributed as dist

    prompt = encode(job.prompt)
    length = prompt.shape[1] + job.max_new_tokens
    env, layout = split_layout(source, job, torch.zeros(1, length, dtype=torch.long), 1)
    vocab = source.spec.num_classes
    last = env.world_size - 1

    def pipeline_logits(tokens: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(tokens, (0, length - tokens.shape[1]))
        out = layout.predict(padded, torch.zeros(len(padded)))
        logits = out[:, tokens.shape[1] - 1].float().contiguous() if out is not None else torch.zeros(len(tokens), layout_vocab)
        dist.broadcast(logits, src=last)
        return logits

    layout_vocab = build_vocab(source)
    started = time.perf_counter()
    if job.split == "pp" and job.kv_cache:
        rows = [pipeline_cached(layout.modules[0], env.rank, env.world_size, prompt, job.max_new_tokens, vocab, source.cfg.model.dim,
                                job.temperature, job.top_k, job.seed + i)[0] for i in range(job.samples)]
    else:
        full = pipeline_logits if job.split == "pp" else None
        rows = [generate(layout.model, prompt, job.max_new_tokens, vocab, job.temperature, job.top_k, job.seed + i,
                         cache=job.kv_cache and job.split == "tp", full_logits=full)[0] for i in range(job.samples)]
    compute_s = time.perf_counter() - started
    if env.rank == 0:
        write_shard(Path(job.staging), 0, {"tokens": torch.stack(rows).numpy()})
    dist.barrier()
    return {"rows": job.samples if env.rank == 0 else 0, "compute_s": compute_s}


@torch.no_grad()
def pipeline_cached(stage, rank: int, stages: int, prompt: torch.Tensor, max_new: int, vocab: int, dim: int,
                    temperature: float, top_k: int, seed: int) -> torch.Tensor:
    """Cached generation over pipeline stages (one per rank, in rank order): the same per-layer computation as
    one process's cached generation (`run_cached`), so the same tokens. Only the last stage draws (from its
    seeded generator, as one process draws) and broadcasts each token."""
    import torch.distributed as dist

    from shoal.infer.generate import KVCache, pick, run_cached

    generator = torch.Generator().manual_seed(seed)
    cache, tokens, start, last = KVCache(), prompt, 0, stages - 1
    for _ in range(max_new):
        feed = tokens[:, start:]
        if rank == 0:
            h = feed
        else:  # a stage that holds only the head gets just the last position (the norm before it cut the rest)
            h = torch.empty(len(feed), 1 if stage.names == ["output"] else feed.shape[1], dim)
            dist.recv(h, src=rank - 1)
        h = run_cached(stage, stage.names, h, cache, start)
        if rank < last:
            dist.send(h.contiguous(), dst=rank + 1)
            token = torch.empty(len(feed), dtype=torch.long)
        else:
            token = pick(h[:, -1], vocab, temperature, top_k, generator)
        dist.broadcast(token, src=last)
        start = tokens.shape[1]
        tokens = torch.cat([tokens, token[:, None]], dim=1)
    return tokens


def build_vocab(source) -> int:
    """The gpt's padded vocabulary: the width of its logits."""
    from shoal.models.gpt import padded_vocab

    return padded_vocab(source.spec.num_classes)

"""`shoal infer`: check the inputs here, run the workers (through the elastic agent, as training does), then
write the manifest, the generated text and the metrics, and rename the output directory into place."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from shoal.errors import ShoalError
from shoal.infer.generate import decode, encode
from shoal.infer.inputs import locate, read
from shoal.infer.job import InferJob
from shoal.infer.output import commit, read_outputs, shard_name, staging_dir, write_manifest
from shoal.infer.predict import score
from shoal.infer.prepack import check_mode
from shoal.infer.source import resolve
from shoal.infer.worker import worker_main
from shoal.run_dir import atomic_write_bytes

SPLITS = ("pp", "tp")


def check(job: InferJob, nproc: int) -> None:
    if nproc < 1:
        raise ShoalError(f"--nproc {nproc}: must be 1 or more")
    if job.batch < 1:
        raise ShoalError(f"--batch {job.batch}: must be 1 or more")
    check_mode(job.prepack)
    if job.split is not None and job.split not in SPLITS:
        raise ShoalError(f"--split {job.split!r}: choose pp or tp")
    if job.split == "pp" and nproc < 2:
        raise ShoalError("--split pp: a pipeline needs --nproc 2 or more (one stage per process)")
    if job.generating:
        if job.max_new_tokens < 1:
            raise ShoalError(f"--max-new-tokens {job.max_new_tokens}: must be 1 or more")
        if job.temperature < 0:
            raise ShoalError(f"--temperature {job.temperature}: must be 0 (greedy) or more")
        if job.top_k < 0 or job.samples < 1:
            raise ShoalError("--top-k must be 0 or more and --samples 1 or more")
    elif job.data is None:
        raise ShoalError("give --data FILE (or --generate with --prompt TEXT for the gpt)")


def run_workers(job: InferJob, nproc: int) -> list[dict]:
    if nproc == 1 and job.split is None:
        results = {0: worker_main(job)}
    else:
        from shoal.launch.local import WorkerFailed, launch_local

        try:
            results = launch_local(worker_main, (job,), nproc)
        except WorkerFailed as err:
            raise SystemExit(f"error: {err}") from None
    errors = [r["error"] for r in results.values() if isinstance(r, dict) and "error" in r]
    if errors:
        raise ShoalError(errors[0])
    return [results[r] for r in sorted(results)]


def infer_command(source_path: Path, out: Path, nproc: int = 1, data: Path | None = None, overwrite: bool = False,
                  **options) -> dict:
    """Returns the summary the CLI prints: rows, shards, seconds, rows/s (tokens/s when generating), metrics."""
    job = InferJob(str(source_path), str(data) if data is not None else None, "", **options)
    check(job, nproc)
    source = resolve(source_path)
    if job.generating:
        if not source.is_gpt:
            raise ShoalError(f"--generate: the run's model is '{source.cfg.model.name}'; only the gpt generates text")
        encode(job.prompt)  # an unknown character fails here, not in every worker
    out = Path(out)
    staging = staging_dir(out, overwrite)
    try:
        inputs = None
        if not job.generating:
            job = replace(job, data=str(locate(data, source, staging)))
            inputs = read(job.data, source)  # checked once here: shape, dtype, labels
            job = replace(job, rows=len(inputs))
        job = replace(job, staging=str(staging))
        started = time.perf_counter()
        results = run_workers(job, nproc)
        seconds = time.perf_counter() - started
        shards = [shard_name(r) for r in range(len(results)) if (staging / shard_name(r)).is_file()]
        rows = [int(r["rows"]) for r in results if r["rows"] or job.split is None]
        compute_s = max((r.get("compute_s", 0.0) for r in results), default=0.0)  # the slowest worker's forward passes
        info = {"source": str(source.weights), "split": job.split, "processes": nproc, "seconds": round(seconds, 3),
                "compute_s": round(compute_s, 3)}
        if results and "prepack" in results[0]:
            info["prepack"] = results[0]["prepack"]
        summary = {"out": str(out), "rows": sum(rows), "shards": len(shards), "seconds": seconds}
        shutil.rmtree(staging / "prepared", ignore_errors=True)
        if job.generating:
            summary.update(_generated(staging, shards, rows, info, job, seconds))
        else:
            summary["rows_per_s"] = len(inputs) / seconds if seconds else 0.0
            write_manifest(staging, shards, rows, {**info, "data": str(data), "task": source.task})
            if inputs.y is not None:
                outputs = torch.from_numpy(read_outputs(staging)["outputs"])
                summary["metrics"] = score(outputs, inputs.y, source.task, source.spec.num_classes)
                atomic_write_bytes(staging / "metrics.json", (json.dumps(summary["metrics"], indent=1) + "\n").encode())
        commit(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _generated(staging: Path, shards: list[str], rows: list[int], info: dict, job: InferJob, seconds: float) -> dict:
    write_manifest(staging, shards, rows, {**info, "prompt": job.prompt, "max_new_tokens": job.max_new_tokens,
                                           "temperature": job.temperature, "top_k": job.top_k, "seed": job.seed,
                                           "kv_cache": job.kv_cache})
    tokens = read_outputs(staging)["tokens"]
    lines = [json.dumps({"sample": i, "seed": job.seed + i, "text": decode(t)}) for i, t in enumerate(tokens)]
    atomic_write_bytes(staging / "generated.jsonl", ("\n".join(lines) + "\n").encode())
    new = job.max_new_tokens * len(tokens)
    return {"tokens": new, "tokens_per_s": new / seconds if seconds else 0.0, "text": [decode(t) for t in tokens]}

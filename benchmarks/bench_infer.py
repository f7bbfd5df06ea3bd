"""`shoal infer`: batch inference rows/s for 1 and 2 replicated processes, and gpt generation tokens/s with the
key-value cache against recomputing the whole sequence (target: >= 3x faster for 256 tokens), in this process
and through `shoal infer --generate` with 1 and 2 processes.

Rows/s: over the slowest worker's forward passes (compute), and over the workers' whole time (launch, imports,
loading, reading, writing shards); wall time adds the command's start-up and its reading the inputs once to check them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bench_jobs import wide_mlp  # noqa: E402

from shoal.infer.generate import generate  # noqa: E402
from shoal.models.gpt import build_gpt  # noqa: E402

MLP = wide_mlp("bench-infer")


def shoal(*args: str) -> tuple[float, str]:
    t = time.perf_counter()
    # one thread per process: 1 vs 2 processes is 1 vs 2 cores, and a shared machine's load does not turn
    # OpenMP's spinning threads into the thing measured
    proc = subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return time.perf_counter() - t, proc.stdout


def batch_inference(tmp: Path, rows: int) -> dict:
    (tmp / "mlp.toml").write_text(MLP)
    shoal("train", str(tmp / "mlp.toml"), "--out", str(tmp / "mlp"))
    np.savez(tmp / "x.npz", x=np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32))
    out = {}
    for nproc in (1, 2):
        wall, _ = shoal("infer", str(tmp / "mlp"), "--data", str(tmp / "x.npz"), "--out", str(tmp / f"o{nproc}"), "--nproc", str(nproc),
                        "--batch", "256")
        manifest = json.loads((tmp / f"o{nproc}" / "manifest.json").read_text())
        out[f"{nproc} process(es)"] = {"rows": rows, "rows_per_s_compute": rows / manifest["compute_s"],
                                       "rows_per_s_workers": rows / manifest["seconds"], "wall_s": wall}
    return out


def kv_cache(tokens: int, repeats: int) -> dict:
    torch.set_num_threads(1)  # one core each way: on a shared machine more threads mostly measure contention
    torch.manual_seed(0)
    model = build_gpt(64, 65, dim=128, layers=4, heads=4).eval()  # examples/gpt_shakespeare.toml's size
    prompt = torch.tensor([[1]])
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):  # interleaved, so both see the same load
        for cache in (True, False):
            t = time.perf_counter()
            generate(model, prompt, tokens, 65, cache=cache)
            times[cache].append(time.perf_counter() - t)
    out = {("kv cache" if cache else "recompute"): {"tokens": tokens, "tokens_per_s": tokens / min(ts), "best_s": min(ts),
                                                    "median_s": sorted(ts)[len(ts) // 2]} for cache, ts in times.items()}
    out["speed-up"] = out["kv cache"]["tokens_per_s"] / out["recompute"]["tokens_per_s"]
    return out


def generation(tmp: Path, tokens: int, samples: int) -> dict:
    job = ROOT / "examples" / "gpt_shakespeare.toml"
    shoal("train", str(job), "--out", str(tmp / "gpt"), "--set", "train.steps=2", "--set", "train.eval_every=0", "--set", "data.limit_eval=32")
    out = {}
    for nproc in (1, 2):
        wall, _ = shoal("infer", str(tmp / "gpt"), "--out", str(tmp / f"g{nproc}"), "--generate", "--max-new-tokens", str(tokens),
                        "--samples", str(samples), "--nproc", str(nproc), "--temperature", "0.8")
        manifest = json.loads((tmp / f"g{nproc}" / "manifest.json").read_text())
        out[f"{nproc} process(es)"] = {"tokens": tokens * samples, "tokens_per_s_compute": tokens * samples / manifest["compute_s"],
                                       "tokens_per_s_workers": tokens * samples / manifest["seconds"], "wall_s": wall}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "infer.json")
    parser.add_argument("--parts", default="cache,batch,generate", help="which measurements, comma-separated")
    args = parser.parse_args()
    parts, results = args.parts.split(","), {}
    if "cache" in parts:
        results["kv cache (256 tokens, one process)"] = kv_cache(args.tokens, 3)
    with tempfile.TemporaryDirectory() as tmp:
        if "batch" in parts:
            results["batch inference"] = batch_inference(Path(tmp), args.rows)
        if "generate" in parts:
            results["shoal infer --generate"] = generation(Path(tmp), args.tokens, 4)
    print(json.dumps(results, indent=1), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

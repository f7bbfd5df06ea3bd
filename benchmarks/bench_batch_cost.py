"""What a batch of b samples costs the served model, and the p99 floor that puts under dynamic batching.

Issue 12 asks batching to serve >= 3x the requests/s of one-at-a-time serving at a p99 no worse than twice a lone
request's latency. Whether any server can do that is a property of the model on its device, which this script
measures without HTTP: forward passes of the model `bench_serve.py --hidden` serves, at each batch size (one
intra-op thread on CPU, as the replicas run; the GPU's own when `--device cuda`), interleaved over sizes, the
fastest and the median of `--repeats` each; on CPU both as trained (nn.Linear: MKL, which packs the weights again
at every call) and as `shoal serve` runs it (linear layers prepacked for oneDNN, shoal/infer/prepack.py),
interleaved too.

The bound it reports: serving 3x the lone rate needs batches whose cost per sample is at most a third of a lone
sample's, so the smallest such batch b3 and its pass time t(b3). At that rate the replica is busy all the time, so
a request waits for the pass in flight before its own: its latency is at least t(b3) and, for the unluckiest
requests (p99), close to 2 t(b3), against a target of 2 t(1) plus the HTTP path. Where t(b3) stays near t(1) (a
device on which a batch of 8-32 costs about what one sample does), the target is in reach; where t(b3) is
several t(1), no batching policy meets it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shoal.config import ModelConfig  # noqa: E402
from shoal.infer.prepack import prepack_linears  # noqa: E402
from shoal.models import build_model  # noqa: E402

BATCHES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def mlp(hidden: tuple[int, ...]) -> torch.nn.Module:
    """The model bench_serve.py serves (bench_jobs.wide_mlp: 64 features, 10 classes), built as training builds it."""
    return build_model(ModelConfig(name="mlp", hidden=list(hidden)), (64,), 10, seed=0).eval()


def pass_times(models: dict[str, torch.nn.Module], device: torch.device, repeats: int) -> dict[str, dict[int, list[float]]]:
    inputs = {b: torch.randn(b, 64, device=device) for b in BATCHES}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in models}
    with torch.no_grad():
        for model in models.values():
            for x in inputs.values():  # warm-up: first calls allocate and pick kernels
                model(x)
        sync()
        for _ in range(repeats):
            for b, x in inputs.items():
                for name, model in models.items():
                    t0 = time.perf_counter()
                    model(x)
                    sync()
                    times[name][b].append((time.perf_counter() - t0) * 1e3)
    return times


def bound(median_ms: dict[int, float]) -> dict:
    lone = median_ms[1]
    b3 = next((b for b in BATCHES if median_ms[b] / b <= lone / 3), None)
    out = {"lone_ms": lone, "b3": b3}
    if b3 is not None:
        out.update(t_b3_ms=median_ms[b3], t_b3_over_lone=median_ms[b3] / lone, p99_floor_ms=2 * median_ms[b3], target_ms=2 * lone)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=lambda v: tuple(int(h) for h in v.split(",")), default=(4096, 4096, 4096))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "batch-cost.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    models = {"as trained": mlp(args.hidden).to(device)}
    if device.type == "cpu":
        models["prepacked"] = mlp(args.hidden)
        print(prepack_linears(models["prepacked"], torch.randn(4, 64), mode="on"))
    auto = prepack_linears(mlp(args.hidden), torch.randn(16, 64), mode="auto") if device.type == "cpu" else None
    if auto:
        print(f"what --prepack auto (the default) decides for this model: {auto}")
    times = pass_times(models, device, args.repeats)
    print(f"model 64 -> {' x '.join(map(str, args.hidden))} -> 10 on {device}")
    print("| | batch | " + " | ".join(map(str, BATCHES)) + " |")
    print("|---|---|" + "---|" * len(BATCHES))
    medians, bounds = {}, {}
    for name, runs in times.items():
        median = medians[name] = {b: statistics.median(v) for b, v in runs.items()}
        print(f"| {name} | ms per pass (median) | " + " | ".join(f"{median[b]:.2f}" for b in BATCHES) + " |")
        print(f"| {name} | ms per pass (fastest) | " + " | ".join(f"{min(runs[b]):.2f}" for b in BATCHES) + " |")
        print(f"| {name} | ms per sample (median) | " + " | ".join(f"{median[b] / b:.2f}" for b in BATCHES) + " |")
        bounds[name] = bound(median)
    for name, found in bounds.items():
        if found["b3"] is None:
            print(f"{name}: no batch up to {BATCHES[-1]} costs a third of a lone sample's {found['lone_ms']:.2f} ms per sample")
        else:
            print(f"{name}: 3x the lone rate needs batches of {found['b3']} or more, {found['t_b3_ms']:.2f} ms a pass "
                  f"({found['t_b3_over_lone']:.2f}x a lone pass): p99 near {found['p99_floor_ms']:.1f} ms "
                  f"against twice a lone pass, {found['target_ms']:.1f} ms (before any HTTP)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "machine": platform.node(),
              "device": str(device), "hidden": list(args.hidden), "auto": auto, "median_ms": medians,
              "fastest_ms": {name: {b: min(v) for b, v in runs.items()} for name, runs in times.items()}, "bound": bounds}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(args.json.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(args.json)


if __name__ == "__main__":
    sys.exit(main())

"""Issue 3 benchmarks: model-parallel layouts on the character-level GPT (and an uneven MLP).

Every run is a real `shoal train` (CLI, local launcher); figures come from its metrics.jsonl.

    python benchmarks/bench_layouts.py memory       # per-rank params+grads+optimizer state, fsdp = 1, 2, 4
    python benchmarks/bench_layouts.py largest      # peak memory per rank at two sizes -> largest gpt per layout
    python benchmarks/bench_layouts.py verify       # train a ~199M gpt with fsdp=4, against the prediction
    python benchmarks/bench_layouts.py throughput   # samples/s of each layout on one gpt
    python benchmarks/bench_layouts.py bubble       # pipeline bubble vs (p-1)/(m+p-1)
    python benchmarks/bench_layouts.py balance      # balanced vs equal-layer-count split on uneven layers
    python benchmarks/bench_layouts.py all

Results go to benchmarks/results/layouts-<what>.json and are printed as Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shoal.config import deep_merge as merged
from shoal.config import to_toml, validate

HERE = Path(__file__).parent
RESULTS = HERE / "results"

GPT = {"model": {"name": "gpt", "layers": 4, "dim": 128, "heads": 4},
       "data": {"name": "shakespeare", "seq_len": 64, "limit_eval": 64},
       "optimizer": {"name": "adamw", "lr": 0.003},
       "train": {"global_batch_size": 32, "steps": 40, "log_every": 10, "eval_every": 1000, "threads": 1}}
# One thread per process everywhere: on a loaded machine two OpenMP threads in one process
# can run several times slower than one (they spin on each other), which would flatter every
# multi-process layout against the 1-process baseline.


def run(raw: dict, nproc: int, tmp: Path, name: str) -> list[dict]:
    """One `shoal train` run; returns its metrics.jsonl records."""
    job, out = tmp / f"{name}.toml", tmp / name
    job.write_text(to_toml(validate(raw)))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "shoal", "train", str(job), "--nproc", str(nproc), "--out", str(out), "--overwrite"],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return records


def steady_rate(records: list[dict]) -> float:
    """Samples/s over every logged window but the first (start-up, first pipeline shape inference)."""
    train = [r for r in records if r["kind"] == "train"]
    windows = train[1:] or train
    steps = [b["step"] - a["step"] for a, b in zip(train, train[1:])] or [train[0]["step"]]
    return sum(steps) / sum(n / r["samples_per_s"] for n, r in zip(steps, windows))  # step-weighted harmonic mean


# --- memory: params + grads + optimizer state per rank under fsdp = 1, 2, 4 -----------------------

def bench_memory(tmp: Path) -> list[dict]:
    raw = merged(GPT, {"model": {"layers": 4, "dim": 512, "heads": 8}, "data": {"seq_len": 32},
                       "train": {"global_batch_size": 8, "steps": 2, "log_every": 1}})
    rows = []
    for n in (1, 2, 4):
        recs = run(merged(raw, {"parallel": {"fsdp": n}}), n, tmp, f"mem-fsdp{n}")
        last = [r for r in recs if r["kind"] == "train"][-1]
        rows.append({"fsdp": n, "state_mb": last["state_mb"], "peak_rss_mb": last["peak_rss_mb"]})
    base = rows[0]["state_mb"]
    for r in rows:
        r["fraction_of_fsdp1"] = r["state_mb"] / base
    return rows


# --- largest gpt per layout: peak RSS per rank at two sizes, extrapolated to the memory budget -----

LAYOUTS_LARGE = {"1 process": ({}, 1), "dp=2": ({"dp": 2}, 2), "fsdp=2": ({"fsdp": 2}, 2), "tp=2": ({"tp": 2}, 2),
                 "pp=2": ({"pp": 2}, 2), "fsdp=4": ({"fsdp": 4}, 4), "fsdp=2 x tp=2": ({"fsdp": 2, "tp": 2}, 4)}


def gpt_params(dim: int, layers: int, vocab: int = 128) -> int:
    return layers * (12 * dim * dim + 9 * dim) + 2 * vocab * dim + 2 * dim


def bench_largest(tmp: Path, budget_gib: float) -> list[dict]:
    sizes = [(512, 4), (1024, 8)]  # ~12.6M and ~100.7M parameters
    rows = []
    for label, (par, nproc) in LAYOUTS_LARGE.items():
        points = []
        for dim, layers in sizes:
            raw = merged(GPT, {"model": {"dim": dim, "layers": layers, "heads": 8}, "data": {"seq_len": 32},
                               "train": {"global_batch_size": 8, "steps": 2, "log_every": 1},
                               "parallel": {**par, "meta_init": True, "microbatches": 2 if par.get("pp") else 0}})
            recs = run(raw, nproc, tmp, f"large-{label.replace(' ', '')}-{dim}")
            last = [r for r in recs if r["kind"] == "train"][-1]
            points.append((gpt_params(dim, layers), last["peak_rss_mb"], last["state_mb"]))
        (p0, m0, _), (p1, m1, s1) = points
        per_param = (m1 - m0) * 2**20 / (p1 - p0)  # bytes of peak RSS per parameter, per rank
        rows.append({"layout": label, "processes": nproc, "peak_rss_mb_small": m0, "peak_rss_mb_large": m1,
                     "state_mb_large": s1, "bytes_per_param_per_rank": per_param})
    return with_largest(rows, budget_gib)


def with_largest(rows: list[dict], budget_gib: float, device_gib: float = 4.0) -> list[dict]:
    """Largest model whose peak fits: each process in `device_gib` (a device's memory), and all of them in `budget_gib`."""
    (p0, _), (p1, _) = [(gpt_params(d, n), 0) for d, n in ((512, 4), (1024, 8))]
    for r in rows:
        fixed = r["peak_rss_mb_small"] - r["bytes_per_param_per_rank"] * p0 / 2**20
        per_rank_mb = lambda cap_mb: (cap_mb - fixed) * 2**20 / r["bytes_per_param_per_rank"]  # noqa: E731
        r[f"largest_params_{device_gib:g}gib_per_process"] = per_rank_mb(device_gib * 1024)
        r[f"largest_params_{budget_gib:g}gib_machine"] = per_rank_mb(budget_gib * 1024 / r["processes"])
    return rows


def bench_verify(tmp: Path) -> list[dict]:
    """Check the fit on one model past the 4 GiB-per-process line for 1 process (~199M parameters): fsdp=4 trains it."""
    dim, layers = 1536, 7
    raw = merged(GPT, {"model": {"dim": dim, "layers": layers, "heads": 8}, "data": {"seq_len": 32, "limit_eval": 16},
                       "train": {"global_batch_size": 8, "steps": 2, "log_every": 1}, "parallel": {"fsdp": 4, "meta_init": True}})
    last = [r for r in run(raw, 4, tmp, "verify-fsdp4") if r["kind"] == "train"][-1]
    fits = {r["layout"]: r for r in json.loads((RESULTS / "layouts-largest.json").read_text())}
    n = gpt_params(dim, layers)

    def predicted(label: str) -> float:
        r = fits[label]
        fixed = r["peak_rss_mb_small"] - r["bytes_per_param_per_rank"] * gpt_params(512, 4) / 2**20
        return fixed + r["bytes_per_param_per_rank"] * n / 2**20

    return [{"params": n, "layout": "fsdp=4", "peak_rss_mb_per_rank": last["peak_rss_mb_per_rank"], "state_mb": last["state_mb"],
             "predicted_peak_mb_fsdp4": predicted("fsdp=4"), "predicted_peak_mb_1_process": predicted("1 process")}]


# --- throughput of each layout on the same gpt ------------------------------------------------------

LAYOUTS_SPEED = {"1 process": ({}, 1), "dp=2 (DDP)": ({"dp": 2}, 2), "fsdp=2": ({"fsdp": 2}, 2),
                 "tp=2 (sequence parallel)": ({"tp": 2}, 2), "tp=2 (no SP)": ({"tp": 2, "sequence_parallel": False}, 2),
                 "pp=2 gpipe m=4": ({"pp": 2, "pp_schedule": "gpipe"}, 2), "pp=2 1f1b m=4": ({"pp": 2, "pp_schedule": "1f1b"}, 2),
                 "pp=2 interleaved m=4": ({"pp": 2, "pp_schedule": "interleaved"}, 2),
                 "fsdp=2 x tp=2 (4 procs)": ({"fsdp": 2, "tp": 2}, 4), "pp=2 x dp=2 (4 procs)": ({"pp": 2, "dp": 2}, 4)}


def bench_throughput(tmp: Path, rounds: int = 2) -> list[dict]:
    """Best of `rounds`, the layouts taking turns, so a burst of load from other work hits them all alike."""
    best: dict[str, float] = {}
    for r in range(rounds):
        for i, (label, (par, nproc)) in enumerate(LAYOUTS_SPEED.items()):
            rate = steady_rate(run(merged(GPT, {"parallel": par}), nproc, tmp, f"speed-{r}-{i}"))
            best[label] = max(best.get(label, 0.0), rate)
    rows = [{"layout": label, "processes": nproc, "samples_per_s": best[label]} for label, (_, nproc) in LAYOUTS_SPEED.items()]
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["vs_1_process"] = r["samples_per_s"] / base
    return rows


# --- pipeline bubble ------------------------------------------------------------------------------------
# Measured inside one 2-process job, so load from other work on this shared machine hits both
# timings alike: the pipeline step, and each rank running its own stage(s) on the same m
# micro-batches with no one to wait for (its busy time). bubble = 1 - max busy / step time.

BUBBLE_CASES = [("gpipe", 2), ("1f1b", 2), ("gpipe", 4), ("1f1b", 4), ("interleaved", 4), ("gpipe", 8), ("1f1b", 8), ("interleaved", 8)]


def _bubble_worker(repeats: int) -> list[dict] | None:
    import statistics

    import torch
    import torch.distributed as dist

    from shoal import parallel
    from shoal.distributed import init_distributed
    from shoal.models import build_model
    from shoal.models.gpt import lm_loss

    env = init_distributed("gloo")
    torch.set_num_threads(1)
    micro, seq, vocab, rows = 8, 64, 84, []
    for schedule, m in BUBBLE_CASES:
        cfg = validate(merged(GPT, {"model": {"dim": 256}, "parallel": {"pp": 2, "pp_schedule": schedule, "microbatches": m}}))
        layout = parallel.build(build_model(cfg.model, (seq,), vocab, 0), env, cfg, torch.zeros(micro, seq, dtype=torch.long))
        g = torch.Generator().manual_seed(0)
        x, y = torch.randint(0, vocab, (m * micro, seq), generator=g), torch.randint(0, vocab, (m * micro, seq), generator=g)
        stages = sorted(layout.stages, key=lambda st: st.stage_index)

        def pipeline_step():
            layout.forward_backward(x, y, lm_loss, 1.0 / len(x), True)

        def alone():
            for _ in range(m):
                for st in stages:
                    inp = x[:micro] if st.is_first else torch.randn(micro, seq, 256, requires_grad=True)
                    out = st.submod(inp)
                    (lm_loss(out, y[:micro]) if st.is_last else out.sum()).backward()

        times = {"step": [], "busy": []}
        for r in range(repeats + 1):  # the first round warms up (shape inference, allocator)
            for what, fn in (("step", pipeline_step), ("busy", alone)):
                dist.barrier()
                t0 = time.perf_counter()
                fn()
                dist.barrier() if what == "step" else None
                if r:
                    times[what].append(time.perf_counter() - t0)
        for mod in layout.modules:
            mod.zero_grad(set_to_none=True)
        mine = torch.tensor([statistics.median(times["busy"]), statistics.median(times["step"])], dtype=torch.float64)
        every = [torch.zeros_like(mine) for _ in range(env.world_size)]
        dist.all_gather(every, mine)
        busy, step = max(float(t[0]) for t in every), max(float(t[1]) for t in every)
        v = cfg.parallel.stages_per_rank if schedule == "interleaved" else 1
        rows.append({"schedule": schedule, "microbatches": m, "busy_s_per_rank": [round(float(t[0]), 4) for t in every],
                     "step_s": step, "bubble_measured": 1 - busy / step, "bubble_theory": 1 / (v * m + 1)})  # (p-1)/(v m + p-1), p = 2
    return rows if env.rank == 0 else None


def bench_bubble(tmp: Path, repeats: int = 5) -> list[dict]:
    from shoal.launch.local import launch_local

    return launch_local(_bubble_worker, (repeats,), nproc=2)[0]


# --- balanced vs naive split on a model with uneven layers ---------------------------------------------

# Two wide layers up front, a tail of narrow ones: equal layer counts put nearly all work in stage 0.
UNEVEN = {"model": {"name": "mlp", "hidden": [2048, 2048, 2048, 256, 256, 256, 256, 256, 256, 256]},
          "data": {"name": "digits", "drop_last": True}, "optimizer": {"name": "sgd", "lr": 0.01},
          "train": {"global_batch_size": 256, "steps": 20, "log_every": 5, "eval_every": 1000, "threads": 1}}


def bench_balance(tmp: Path, rounds: int = 2) -> list[dict]:
    """Each split's best step time over `rounds`, the splits taking turns (outside load hits all alike)."""
    best: dict[str, float] = {}
    info: dict[str, dict] = {}
    for r in range(rounds):
        for balance in ("layers", "cost", "time"):
            recs = run(merged(UNEVEN, {"parallel": {"pp": 2, "pp_balance": balance}}), 2, tmp, f"balance-{balance}-{r}")
            info[balance] = next(x for x in recs if x["kind"] == "layout")["pipeline"]
            best[balance] = min(best.get(balance, float("inf")), UNEVEN["train"]["global_batch_size"] / steady_rate(recs))
    rows = []
    for balance, pipe in info.items():
        m, p = pipe["microbatches"], len(pipe["stages"])
        rows.append({"split": balance, "stages": " / ".join(f"{s[0]}-{s[-1]}" for s in pipe["stages"]),
                     "predicted_stage_s": [round(t, 5) for t in pipe["predicted_s"]],
                     "predicted_step_s": (m + p - 1) * max(pipe["predicted_s"]), "step_s": best[balance]})
    naive = rows[0]["step_s"]
    for r in rows:
        r["speedup_vs_equal_layers"] = naive / r["step_s"]
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["memory", "largest", "verify", "throughput", "bubble", "balance", "all"])
    parser.add_argument("--budget-gib", type=float, default=20.0, help="memory the largest-model estimate may use, all processes together")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    todo = ["memory", "throughput", "bubble", "balance", "largest"] if args.what == "all" else [args.what]
    with tempfile.TemporaryDirectory() as tmp:
        for what in todo:
            fn = {"memory": bench_memory, "verify": bench_verify, "throughput": bench_throughput, "bubble": bench_bubble, "balance": bench_balance,
                  "largest": lambda t: bench_largest(t, args.budget_gib)}[what]
            rows = fn(Path(tmp))
            (RESULTS / f"layouts-{what}.json").write_text(json.dumps(rows, indent=1))
            print(f"\n### {what}\n\n{table(rows)}\n", flush=True)


if __name__ == "__main__":
    main()

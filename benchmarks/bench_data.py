"""Parquet data per rank, and the data wait with and without background prefetch.

Memory: a Parquet data set (4 shard files, row groups of 16,384 rows, 32 float32 features and
an integer label) trained on 1, 2 and 4 processes with `data.read` = all (every rank loads every
row: the baseline), rank (each rank holds the rows it uses) and stream (blocks of 32,768 rows).
Per rank: the bytes its data sets held at most (the run's "data" record; for `all`, the
training and evaluation tensors every rank builds), and the peak RSS of the process (the memory
monitor) less the peak RSS of the same job and mode on a 2,048-row copy of the data (the runtime,
model, batches and libraries such as pandas, which `all` imports: what is not the data set), up to
the last training step (evaluation, on the last 10% of rows, comes after it; its rows count in
the bytes held). Ratios are against `all` at the same process count.

Bytes read: one epoch on a 200,000-row copy (row groups of 4,096 rows: 52 of them) with `data.read` = rank and stream,
with `data.lanes` = 0 (rows shuffled over the whole file: the baseline) and 8 (each rank reads its
own lanes' row groups / blocks), on 2 and 4 processes. Per rank: the compressed bytes of the row
group columns it decoded (the run's "data" record), as a fraction of the file's bytes, and the
training time; ratios are against lanes = 0 at the same mode and process count.

Data wait: the mean `data_wait_s` of the training records (the first window, start-up, left
out) with `data.prefetch` = off (the baseline: the batch is read when the step asks for it) and
on, on the MNIST CNN and gpt examples and on the Parquet data per rank and streamed, 2 processes,
runs interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
FEATURES = 32
ROW_GROUP = 16384
READ_GROUP = 4096  # the bytes-read part: 52 row groups, so 8 lanes over 4 ranks get several each


def write_parquet(out: Path, rows: int, row_group: int = ROW_GROUP) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    w = g.standard_normal((FEATURES, 4))
    shards = []
    for i, part in enumerate(np.array_split(np.arange(rows), 4)):
        x = g.standard_normal((len(part), FEATURES)).astype(np.float32)
        y = np.argmax(x @ w, axis=1).astype(np.int64)
        pq.write_table(pa.table({**{f"f{j}": x[:, j] for j in range(FEATURES)}, "label": y}), out / f"part-{i}.parquet",
                       row_group_size=row_group)
        shards.append(f"part-{i}.parquet")
    (out / "manifest.json").write_text(json.dumps({"shards": shards, "features": [f"f{j}" for j in range(FEATURES)], "label": "label"}))
    return out


def parquet_job(path: Path, steps: int) -> str:
    return (f'name = "bench-data"\n[model]\nname = "mlp"\nhidden = [64]\n[data]\nname = "parquet"\npath = "{path}"\n'
            f'eval_fraction = 0.1\nstream_block_rows = 32768\n[optimizer]\nlr = 0.05\n[train]\nglobal_batch_size = 256\n'
            f'steps = {steps}\nlog_every = 10\neval_every = 100000\n[checkpoint]\nat_end = false\n[log]\nmonitors = ["memory"]\n')


def train(job: Path, out: Path, nproc: int, *sets: str) -> list[dict]:
    extra = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "shoal", "train", str(job), "--nproc", str(nproc), "--out", str(out), "--overwrite",
                           *extra], capture_output=True, text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def peak_rss(records: list[dict]) -> list[float]:
    return [r for r in records if r["kind"] == "train"][-1]["peak_rss_mb_per_rank"]


def memory(tmp: Path, rows: int, steps: int) -> dict:
    big, small = write_parquet(tmp / "big", rows), write_parquet(tmp / "small", 2048)
    (tmp / "big.toml").write_text(parquet_job(big, steps))
    (tmp / "small.toml").write_text(parquet_job(small, steps))
    all_bytes = rows * (FEATURES * 4 + 8)  # read = all: every rank's training and evaluation tensors
    out: dict = {"rows": rows, "data_bytes": all_bytes, "runs": {}}
    for nproc in (1, 2, 4):
        for mode in ("all", "rank", "stream"):
            base = max(peak_rss(train(tmp / "small.toml", tmp / "run", nproc, f'data.read="{mode}"')))  # all imports pandas too
            rec = train(tmp / "big.toml", tmp / "run", nproc, f'data.read="{mode}"')
            data = [r for r in rec if r["kind"] == "data"]
            held = [r["peak_bytes"] for r in data[0]["ranks"]] if data else [all_bytes] * nproc
            read = [r["rows_read"] for r in data[0]["ranks"]] if data else [rows] * nproc
            out["runs"][f"{mode} x{nproc}"] = {"held_bytes_per_rank": held, "rows_read_per_rank": read,
                                               "rss_mb_per_rank": peak_rss(rec), "baseline_rss_mb": base}
            print(mode, nproc, max(held) / 2**20, max(peak_rss(rec)) - base, flush=True)
    return out


def file_bytes(path: Path) -> int:
    import pyarrow.parquet as pq

    return sum(m.row_group(g).column(c).total_compressed_size for m in (pq.ParquetFile(f).metadata for f in sorted(path.glob("*.parquet")))
               for g in range(m.num_row_groups) for c in range(m.num_columns))


def reads(tmp: Path, rows: int) -> dict:
    data = write_parquet(tmp / "reads", rows, READ_GROUP)
    (tmp / "reads.toml").write_text(parquet_job(data, 0))
    out: dict = {"rows": rows, "file_bytes": file_bytes(data), "runs": {}}
    for nproc in (2, 4):
        for mode in ("rank", "stream"):
            for lanes in (0, 8):
                rec = train(tmp / "reads.toml", tmp / "run", nproc, f'data.read="{mode}"', f"data.lanes={lanes}", "train.steps=0",
                            "train.epochs=1", "train.log_every=100")
                ranks = [r for r in rec if r["kind"] == "data"][0]["ranks"]
                out["runs"][f"{mode} lanes={lanes} x{nproc}"] = {
                    "bytes_read_per_rank": [r["bytes_read"] for r in ranks], "rows_read_per_rank": [r["rows_read"] for r in ranks],
                    "row_groups_read_per_rank": [r["row_groups_read"] for r in ranks],
                    "train_s": [r for r in rec if r["kind"] == "train"][-1]["time_s"]}
                print(mode, lanes, nproc, out["runs"][f"{mode} lanes={lanes} x{nproc}"], flush=True)
    return out


def wait(tmp: Path, rounds: int) -> dict:
    pq_job = tmp / "big.toml"
    jobs = {"mnist cnn": (ROOT / "examples" / "mnist_cnn.toml", ["train.steps=80", "train.log_every=20", "data.limit_eval=256",
                                                                  "checkpoint.at_end=false"]),
            "gpt": (ROOT / "examples" / "gpt_shakespeare.toml", ["train.steps=40", "train.log_every=10", "train.eval_every=0",
                                                                 "data.limit_eval=64", "checkpoint.at_end=false"]),
            "parquet, read = rank": (pq_job, ['data.read="rank"', "train.steps=80"]),
            "parquet, read = stream": (pq_job, ['data.read="stream"', "train.steps=80"])}
    out: dict = {name: {"off": [], "on": []} for name in jobs}
    for _ in range(rounds):
        for name, (job, sets) in jobs.items():
            for mode in ("off", "on"):
                rec = [r for r in train(job, tmp / "run", 2, *sets, f'data.prefetch="{mode}"') if r["kind"] == "train"][1:]
                out[name][mode].append({"data_wait_s": statistics.mean(r["data_wait_s"] for r in rec),
                                        "step_s": statistics.mean(r["step_s"] for r in rec)})
                print(name, mode, out[name][mode][-1], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--read-rows", type=int, default=200_000)
    p.add_argument("--only", choices=["all", "reads"], default="all", help="reads: only the bytes-read part (its own file)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        r = reads(Path(d), a.read_rows)
        Path(a.out).with_name("data_reads.json").write_text(json.dumps(r, indent=1))
        print_reads(r)
        if a.only == "reads":
            return
        result = {"memory": memory(Path(d), a.rows, a.steps), "wait": wait(Path(d), a.rounds)}
    Path(a.out).write_text(json.dumps(result, indent=1))
    m = result["memory"]
    print(f"\n{m['rows']:,} rows, {m['data_bytes'] / 2**20:.0f} MiB as tensors; per rank, largest of the ranks")
    print("| read | processes | data held (MiB) | vs all | rows read | RSS above baseline (MiB) | vs all |")
    print("|---|---|---|---|---|---|---|")
    for key, r in m["runs"].items():
        mode, n = key.split(" x")
        ref = m["runs"][f"all x{n}"]
        rss, ref_rss = max(r["rss_mb_per_rank"]) - r["baseline_rss_mb"], max(ref["rss_mb_per_rank"]) - ref["baseline_rss_mb"]
        print(f"| {mode} | {n} | {max(r['held_bytes_per_rank']) / 2**20:.1f} | {max(r['held_bytes_per_rank']) / max(ref['held_bytes_per_rank']):.3f} | "
              f"{max(r['rows_read_per_rank']):,} | {rss:.0f} | {rss / ref_rss:.2f} |")
    print("\n| job (2 processes) | data wait off (ms) | data wait on (ms) | on / off | step on (ms) | wait / step on |")
    print("|---|---|---|---|---|---|")
    for name, r in result["wait"].items():
        off, on = (statistics.median(x["data_wait_s"] for x in r[k]) * 1e3 for k in ("off", "on"))
        step = statistics.median(x["step_s"] for x in r["on"]) * 1e3
        print(f"| {name} | {off:.2f} | {on:.2f} | {on / off:.2f} | {step:.1f} | {on / step:.1%} |")


def print_reads(r: dict) -> None:
    print(f"\n{r['rows']:,} rows, file {r['file_bytes'] / 2**20:.1f} MiB; one epoch; per rank, largest of the ranks")
    print("| read | processes | lanes | bytes read per rank (MiB) | of the file | vs lanes = 0 | row groups decoded | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for key, x in r["runs"].items():
        mode, lanes, n = key.split(" ")
        ref = r["runs"][f"{mode} lanes=0 {n}"]
        most, ref_most = max(x["bytes_read_per_rank"]), max(ref["bytes_read_per_rank"])
        t = f"{x['train_s']:.1f}" if x["train_s"] else "-"
        print(f"| {mode} | {n[1:]} | {lanes[6:]} | {most / 2**20:.1f} | {most / r['file_bytes']:.2f} | {most / ref_most:.2f} | "
              f"{max(x['row_groups_read_per_rank'])} | {t} |")


if __name__ == "__main__":
    main()

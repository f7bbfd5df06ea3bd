"""Issue 5 benchmark: the full preprocessing pipeline on TPC-H lineitem, Shoal on Dask vs pandas + scikit-learn.

Pipeline (identical on both sides): statistics of every column (count, missing, min, max,
mean, median, quartiles, var, std, distinct), fill missing by median, clip outliers at the
0.1% / 99.9% quantiles, standardize, discretize two columns into 10 quantile bins, PCA to
3 components, write Parquet. Each side runs in its own subprocess; peak memory is the
largest summed RSS of that process and its children (dask workers), sampled every 50 ms.

    python benchmarks/bench_prep.py            # scale 1 (6M rows) + a memory-capped larger scale
    python benchmarks/bench_prep.py --quick    # scale 0.1, no cap: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NUMERIC = ["l_quantity", "l_extendedprice", "l_discount", "l_tax", "l_linenumber"]
TEXT = ["l_returnflag", "l_linestatus", "l_shipmode"]
BINNED = ["l_extendedprice", "l_quantity"]
QUANTILES = [0.25, 0.5, 0.75]


# --- data ---------------------------------------------------------------------------
def generate(scale: float, directory: Path) -> Path:
    """lineitem from tpchgen-cli, decimals as float64, 1% of quantities missing (so fill has work)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    target = directory / f"lineitem-s{scale:g}"
    if (target / "_done").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    raw = directory / f"raw-s{scale:g}"
    parts = max(1, round(12 * scale))  # ~500k rows per file
    tool = Path(sys.executable).with_name("tpchgen-cli")
    subprocess.run([str(tool), "parquet", "-s", f"{scale:g}", "--tables=lineitem", f"--parts={parts}", f"--output-dir={raw}"], check=True)
    target.mkdir(parents=True)
    for i, path in enumerate(sorted((raw / "lineitem").glob("*.parquet"))):
        table = pq.read_table(path, columns=NUMERIC + TEXT)
        columns = {c: pc.cast(table[c], pa.float64()) for c in NUMERIC}
        mask = np.random.default_rng(i).random(table.num_rows) < 0.01
        columns["l_quantity"] = pc.if_else(pa.array(mask), pa.nulls(table.num_rows, pa.float64()), columns["l_quantity"])
        columns.update({c: pc.cast(table[c], pa.string()) for c in TEXT})
        pq.write_table(pa.table(columns), target / f"part-{i:04d}.parquet")
    shutil.rmtree(raw)
    (target / "_done").write_text("")
    return target


def count_rows(data: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in data.glob("*.parquet"))


# --- the two sides --------------------------------------------------------------------
def run_pandas(data: Path, out: Path) -> int:
    import pandas as pd
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import KBinsDiscretizer, StandardScaler

    df = pd.read_parquet(data, columns=NUMERIC + TEXT)
    stats = {}
    for c in df.columns:
        col = df[c]
        entry = {"count": int(col.count()), "missing": int(col.isna().sum()), "distinct": int(col.nunique())}
        if c in NUMERIC:
            q = col.quantile(QUANTILES)
            entry.update(min=col.min(), max=col.max(), mean=col.mean(), median=col.median(), q=q.tolist(), var=col.var(), std=col.std())
        stats[c] = entry
    df[NUMERIC] = df[NUMERIC].fillna(df[NUMERIC].median())
    bounds = df[NUMERIC].quantile([0.001, 0.999])
    df[NUMERIC] = df[NUMERIC].clip(bounds.iloc[0], bounds.iloc[1], axis=1)
    df[NUMERIC] = StandardScaler().fit_transform(df[NUMERIC].to_numpy())
    df[BINNED] = KBinsDiscretizer(n_bins=10, encode="ordinal", strategy="quantile").fit_transform(df[BINNED].to_numpy())
    scores = PCA(n_components=3, svd_solver="full").fit_transform(df[NUMERIC].to_numpy())
    for i in range(3):
        df[f"pc{i + 1}"] = scores[:, i]
    out.mkdir(parents=True)
    df.to_parquet(out / "part-00000.parquet", index=False)
    (out / "stats.json").write_text(json.dumps(stats, default=float))
    return len(df)


PIPELINE = """
[[source]]
name = "lineitem"
path = "{data}/*.parquet"
columns = {columns}

[[step]]
op = "stats"
name = "input"

[[step]]
op = "fill"
strategy = "median"
columns = {numeric}

[[step]]
op = "outliers"
columns = {numeric}
rule = "quantile"
lower = 0.001
upper = 0.999

[[step]]
op = "standardize"
columns = {numeric}

[[step]]
op = "discretize"
columns = {binned}
bins = 10
strategy = "quantile"

[[step]]
op = "pca"
columns = {numeric}
n_components = 3
keep_columns = true
"""


def run_shoal(data: Path, out: Path, workers: int) -> int:
    from shoal.prep import run_prep

    toml = out.parent / f"{out.name}.toml"
    toml.write_text(
        PIPELINE.format(data=data, columns=json.dumps(NUMERIC + TEXT), numeric=json.dumps(NUMERIC), binned=json.dumps(BINNED))
    )
    if workers == 0:  # the local threaded scheduler: run_prep's default
        return run_prep(toml, out).rows
    from distributed import LocalCluster

    cap = os.environ.get("BENCH_WORKER_MEMORY", "auto")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=cap, dashboard_address=None) as cluster:
        return run_prep(toml, out, cluster=cluster.scheduler_address).rows


# --- measuring --------------------------------------------------------------------------
def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(side: str, data: Path, cap_gib: float | None) -> dict:
    """Run one side in a fresh subprocess (under RLIMIT_AS when capped) and sample its memory."""
    out = Path(tempfile.mkdtemp(prefix="bench-prep-")) / "out"
    cmd = [sys.executable, __file__, "--side", side, "--data", str(data), "--out", str(out)]
    env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="2")
    if cap_gib:
        env["BENCH_CAP_BYTES"] = str(int(cap_gib * 2**30))
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    seconds = time.perf_counter() - started
    shutil.rmtree(out.parent, ignore_errors=True)
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["killed"])[-1]
        return {"side": side, "ok": False, "seconds": seconds, "peak_gib": peak / 2**30, "error": last[:120]}
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"side": side, "ok": True, "seconds": seconds, "inner_seconds": result["seconds"], "rows": result["rows"], "peak_gib": peak / 2**30}


def child(side: str, data: Path, out: Path) -> None:
    cap = os.environ.get("BENCH_CAP_BYTES")
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (int(cap), int(cap)))
    # import outside the timed region (`import shoal` also imports torch: seconds that are not preprocessing)
    import dask.dataframe  # noqa: F401
    import sklearn.decomposition  # noqa: F401

    if side != "pandas":
        import distributed  # noqa: F401
        import shoal.prep  # noqa: F401
    started = time.perf_counter()
    if side == "pandas":
        rows = run_pandas(data, out)
    else:
        rows = run_shoal(data, out, {"shoal-threads": 0, "shoal-1worker": 1, "shoal-2workers": 2}[side])
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started}))


SIDES = ["pandas", "shoal-threads", "shoal-1worker", "shoal-2workers"]


def table(title: str, rows: int, results: list[dict]) -> str:
    lines = [f"### {title}", "", "| side | wall s (process) | pipeline s | rows/s | peak RSS GiB | result |", "|---|---|---|---|---|---|"]
    for r in results:
        if r["ok"]:
            lines.append(f"| {r['side']} | {r['seconds']:.1f} | {r['inner_seconds']:.1f} | {rows / r['inner_seconds']:,.0f} | {r['peak_gib']:.2f} | ok |")
        else:
            lines.append(f"| {r['side']} | {r['seconds']:.1f} | - | - | {r['peak_gib']:.2f} | failed: `{r['error']}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="scale 0.1, no memory cap")
    parser.add_argument("--scale", type=float, default=1.0, help="the uncapped run (0: skip it)")
    parser.add_argument("--big-scale", type=float, default=5.0, help="the larger scale run under --cap (0: skip it)")
    parser.add_argument("--cap", type=float, default=3.0, help="GiB of address space for each side in the big run")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--big-sides", default="pandas,shoal-threads")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "shoal-bench-prep"))
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args.side, Path(args.data), Path(args.out))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runs = [(0.1 if args.quick else args.scale, None, [x for x in args.sides.split(",") if x])]
    runs = [r for r in runs if r[0] > 0 and r[2]]  # --scale 0: only the capped run
    if not args.quick and args.big_scale:
        runs.append((args.big_scale, args.cap, args.big_sides.split(",")))
    for scale, cap, sides in runs:
        data = generate(scale, workdir)
        rows = count_rows(data)
        results = [measure(side, data, cap) for side in sides]
        title = f"lineitem scale {scale:g} ({rows:,} rows)" + (f", each side capped at {cap:g} GiB address space" if cap else ", no memory cap")
        print(table(title, rows, results), flush=True)
        print(flush=True)


if __name__ == "__main__":
    main()

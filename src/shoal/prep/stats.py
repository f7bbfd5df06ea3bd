"""Column statistics (exact), as a step and as the JSON and Markdown files of the output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from shoal.prep._columns import is_numeric
from shoal.prep.aggregates import merge_distinct, merge_moments, partition_distinct, partition_moments, per_partition
from shoal.prep.quantiles import exact_quantiles, merge_brackets, partition_brackets

DEFAULT_QUANTILES = [0.25, 0.5, 0.75]


def column_statistics(frame, columns: list[str] | None = None, quantiles=DEFAULT_QUANTILES, distinct: bool = True) -> dict:
    """count, missing, min, max, mean, median, quantiles, var/std (ddof=1, as pandas), distinct.

    Every number is exact: moments merge per partition, quantiles use exact order
    statistics (pandas' linear interpolation), distinct counts a distributed drop of
    duplicates. Text and date columns get count, missing and distinct only.
    """
    columns = list(frame.columns) if columns is None else columns
    numeric = [c for c in columns if is_numeric(frame.dtypes[c])]
    # one pass for moments, counts, distinct values and quantile brackets; one more for the quantiles
    levels = sorted(set(quantiles) | {0.5})
    parts = per_partition(frame[columns], _profile, numeric, columns, levels, distinct)
    summary = merge_moments([p[0] for p in parts]) if numeric else None
    brackets = merge_brackets([p[1] for p in parts], numeric, levels) if numeric else None
    counts = dict(zip(columns, sum(p[2] for p in parts)))
    rows = sum(p[3] for p in parts)
    uniques = merge_distinct([p[4] for p in parts]) if distinct else {}
    qs = exact_quantiles(frame, numeric, levels, "linear", summary, brackets) if numeric else {}
    out = {}
    for c in columns:
        entry = {"dtype": str(frame.dtypes[c]), "count": int(counts[c]), "missing": int(rows - counts[c])}
        if c in numeric:
            i = numeric.index(c)
            var = summary.variance(ddof=1)[i]
            entry.update(
                min=float(summary.minimum[i]),
                max=float(summary.maximum[i]),
                mean=float(summary.mean[i]),
                median=qs[c][levels.index(0.5)],
                quantiles={_level(q): qs[c][levels.index(q)] for q in quantiles},
                var=float(var),
                std=float(np.sqrt(var)),
            )
        if distinct:
            entry["distinct"] = int(uniques[c])
        out[c] = entry
    return {"rows": int(rows), "columns": out}


def _profile(part, numeric: list[str], columns: list[str], levels: list[float], distinct: bool):
    if numeric:
        moments_, brackets = partition_moments(part, numeric), partition_brackets(part, numeric, levels)
    else:
        moments_, brackets = None, None
    uniques = partition_distinct(part, columns) if distinct else None
    return moments_, brackets, part[columns].count().to_numpy(), len(part), uniques


def _level(q: float) -> str:
    return f"{q:g}"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def markdown_table(stats: dict) -> str:
    """A readable table per recorded stage, one row per column."""
    lines = []
    for stage, table in stats.items():
        lines += [f"## {stage} ({table['rows']} rows)", ""]
        qnames = sorted({q for e in table["columns"].values() for q in e.get("quantiles", {})}, key=float)
        head = ["column", "dtype", "count", "missing", "distinct", "min", "max", "mean", "std", "median"]
        head += [f"q{q}" for q in qnames]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for column, e in table["columns"].items():
            row = [column, e["dtype"], e["count"], e["missing"], e.get("distinct"), e.get("min"), e.get("max"),
                   e.get("mean"), e.get("std"), e.get("median")]  # fmt: skip
            row += [e.get("quantiles", {}).get(q) for q in qnames]
            lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


def write_stats(stats: dict, directory: Path) -> Path:
    path = directory / "stats.json"
    path.write_text(json.dumps(stats, indent=1))
    (directory / "stats.md").write_text("# Statistics\n\n" + markdown_table(stats))
    return path

"""The report page: a summary table, runs side by side on shared plots, then each run's own detail.

Everything (styles, SVG plots) is inline, so the file opens anywhere with no network.
"""

from __future__ import annotations

import datetime as dt
import statistics
from html import escape

from shoal.report.load import Run
from shoal.report.svg import Line, line_chart, stacked_bars

PHASES = [("data_wait_s", "data wait"), ("compute_s", "compute"), ("comm_exposed_s", "exposed communication"), ("update_s", "update")]
STYLE = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1500px}h1{font-size:22px}h2{font-size:17px;margin-top:28px;
border-bottom:1px solid #ccc}table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f4f4f4}.plots{display:flex;flex-wrap:wrap;gap:10px}.plot{border:1px solid #e4e4e4;background:#fff}
.note{color:#666;font-size:12px}"""


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}g}" if abs(v) < 1e6 else f"{v:.3e}"
    return escape(str(v))


def world_size(run: Run) -> int:
    for r in run.train:
        for key, value in r.items():
            if key.endswith("_per_rank") and isinstance(value, list):
                return len(value)
    return int(run.config.get("nproc", 1))


def layout_of(run: Run) -> str:
    layouts = run.of_kind("layout")
    if layouts:
        return str(layouts[-1].get("layout", ""))
    p = run.config.get("parallel", {})
    dims = [f"{k}={p[k]}" for k in ("fsdp", "tp", "pp") if p.get(k, 1) > 1]
    return " x ".join([f"dp={world_size(run)}" if not dims else f"dp={p.get('dp') or 'rest'}"] + dims)


def summary(run: Run) -> dict[str, object]:
    last_train = run.train[-1] if run.train else {}
    last_eval = run.eval[-1] if run.eval else {}
    rates = run.series("samples_per_s")[1]
    return {
        "run directory": str(run.path), "job": run.config.get("name", "job"), "processes": world_size(run), "layout": layout_of(run),
        "model": run.info.get("model") or run.config.get("model", {}).get("name"), "steps": last_train.get("step"),
        "training time (s)": last_train.get("time_s"), "final train loss": last_train.get("loss"),
        **{f"final eval {k}": last_eval.get(k) for k in ("loss", "accuracy", "f1") if k in last_eval},
        "samples/s (median window)": _median(rates), "step time (s, median)": _median(run.series("step_s")[1]),
        "MFU (median)": _median(run.series("mfu")[1]), "peak RSS per rank (MB, max)": last_train.get("peak_rss_mb"),
        "stragglers named": len(run.of_kind("straggler")), "restarts/resumes": len(run.of_kind("resume")),
    }


def _table(runs: list[Run]) -> str:
    rows = [summary(r) for r in runs]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{escape(r.name)}</th>" for r in runs)
    body = "".join(f"<tr><th>{escape(k)}</th>" + "".join(f"<td>{_fmt(row.get(k))}</td>" for row in rows) + "</tr>" for k in keys)
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _each(runs: list[Run], key: str, records: str = "train") -> list[Line]:
    return [Line(r.name, *r.series(key, getattr(r, records))) for r in runs]


def compare(runs: list[Run]) -> str:
    """The plots where runs sit on the same axes."""
    plots = [line_chart("training loss", _each(runs, "loss"), ylabel="loss"),
             line_chart("evaluation loss", _each(runs, "loss", "eval"), ylabel="loss")]
    if any(r.series("accuracy", r.eval)[0] for r in runs):
        plots.append(line_chart("evaluation accuracy", _each(runs, "accuracy", "eval"), ylabel="accuracy"))
    plots += [line_chart("throughput", _each(runs, "samples_per_s"), ylabel="samples / s"),
              line_chart("model FLOPs utilization", _each(runs, "mfu"), ylabel="MFU (of measured peak)")]
    means = {label: [_median(r.series(key)[1]) or 0.0 for r in runs] for key, label in PHASES}
    plots.append(stacked_bars("where a step's time goes (median per window)", [r.path.name for r in runs], means, ylabel="seconds per step"))
    return '<div class="plots">' + "".join(plots) + "</div>"


def _per_rank(run: Run, key: str) -> list[Line]:
    """A line per rank, over the steps that rank took part in: an elastic run's world size changes when a node leaves
    or joins, so each line keeps its own steps, paired with its own values."""
    rows = [(r["step"], r[f"{key}_per_rank"]) for r in run.train if isinstance(r.get(f"{key}_per_rank"), list)]
    lines = []
    for rank in range(max((len(v) for _, v in rows), default=0)):
        points = [(step, v[rank]) for step, v in rows if rank < len(v)]
        lines.append(Line(f"rank {rank}", [s for s, _ in points], [y for _, y in points]))
    return lines


def _mark_stragglers(run: Run, lines: list[Line]) -> None:
    for event in run.of_kind("straggler"):
        rank = event.get("rank")
        if isinstance(rank, int) and rank < len(lines) and lines[rank].xs:
            line = lines[rank]
            nearest = min(range(len(line.xs)), key=lambda i: abs(line.xs[i] - event.get("step", 0)))
            line.marks.append((line.xs[nearest], line.ys[nearest]))


def detail(run: Run) -> str:
    """One run's own plots: per-rank busy and step times (stragglers ringed), utilization, memory, network, and its layout."""
    busy = _per_rank(run, "rank_busy_s")
    _mark_stragglers(run, busy)
    stragglers = run.of_kind("straggler")
    named = ", ".join(f"rank {e.get('rank')} at step {e.get('step')} ({_fmt(e.get('step_s'))} s vs median {_fmt(e.get('median_s'))} s)"
                      for e in stragglers[:10])
    plots = [line_chart("busy (CPU) time per rank, stragglers ringed", busy, ylabel="CPU seconds per step"),
             line_chart("step time per rank", _per_rank(run, "rank_step_s"), ylabel="seconds per step"),
             line_chart("CPU use per rank", _per_rank(run, "cpu_percent"), ylabel="% of one core"),
             line_chart("MFU per rank", _per_rank(run, "mfu"), ylabel="MFU"),
             line_chart("resident memory per rank", _per_rank(run, "rss_mb"), ylabel="MB"),
             line_chart("parameter + gradient + optimizer state per rank", _per_rank(run, "state_mb"), ylabel="MB"),
             line_chart("network bytes sent per window (machine)", _per_rank(run, "net_sent_mb"), ylabel="MB")]
    breakdown = {label: run.series(key)[1] for key, label in PHASES}
    steps_x = run.series("step_s")[0]
    if steps_x:
        breakdown = {k: v for k, v in breakdown.items() if len(v) == len(steps_x)}
        plots.append(stacked_bars("step time by window", [str(s) for s in steps_x], breakdown, ylabel="seconds per step"))
    parallel = run.config.get("parallel", {})
    layout_rows = [("layout", layout_of(run)), ("processes", world_size(run))]
    layout_rows += [(f"parallel.{k}", parallel[k]) for k in ("dp", "fsdp", "tp", "pp", "pp_schedule", "microbatches", "activation_checkpointing")
                    if k in parallel]
    layout_rows += [(f"comm.{k}", v) for k, v in run.config.get("comm", {}).items() if k == "compression"]
    for event in run.of_kind("layout")[-1:]:
        layout_rows += [(k, v) for k, v in event.items() if k not in ("kind", "layout", "unix_time")]
    table = "<table>" + "".join(f"<tr><th>{escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in layout_rows) + "</table>"
    note = f'<p class="note">stragglers: {escape(named)}</p>' if named else '<p class="note">no straggler was named in this run</p>'
    return f'<h2>{escape(run.name)}</h2>{table}{note}<div class="plots">{"".join(plots)}</div>'


def render(runs: list[Run]) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = "Shoal report: " + ", ".join(r.name for r in runs)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{STYLE}</style></head>'
            f'<body><h1>{escape(title)}</h1><p class="note">written {when} from metrics.jsonl; self-contained (no network needed)</p>'
            f"<h2>Summary</h2>{_table(runs)}<h2>Side by side</h2>{compare(runs)}" + "".join(detail(r) for r in runs) + "</body></html>")

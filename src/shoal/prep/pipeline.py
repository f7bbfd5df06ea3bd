"""run_prep: read the sources, fit (or reapply) the steps, write shards, manifest, stats and fitted state."""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dask

from shoal.errors import ShoalError
from shoal.prep._columns import numeric_columns, require_numeric
from shoal.prep.config import Pipeline, load_pipeline, parse_pipeline
from shoal.prep.fitted import load_fitted, save_fitted
from shoal.prep.output import staged_directory, write_manifest, write_shards
from shoal.prep.sources import read_sources, resolve_path
from shoal.prep.stats import column_statistics, write_stats
from shoal.prep.steps import StepContext
from shoal.prep.steps.transform import _ordinal

LOCAL_SCHEDULER = "threads"  # measured fastest here for numpy-heavy partitions; see docs/prep.md


@dataclass
class PrepResult:
    out_dir: Path
    rows: int
    shards: int
    features: list[str]
    label: str | None
    label_classes: int | None
    manifest_path: Path
    stats_path: Path
    fitted_path: Path
    applied_from: Path | None = None
    seconds: float = 0.0
    stats_stages: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        mode = f"applied fitted state from {self.applied_from}" if self.applied_from else "fitted"
        label = f"{self.label} ({self.label_classes} classes)" if self.label_classes else (self.label or "none")
        return [
            f"prep {mode}: {self.rows:,} rows in {self.shards} shards -> {self.out_dir} ({self.seconds:.1f} s)",
            f"features ({len(self.features)}): {', '.join(self.features[:12])}{' ...' if len(self.features) > 12 else ''}",
            f"label: {label}",
            f"manifest: {self.manifest_path}",
            f"statistics: {self.stats_path} (stages: {', '.join(self.stats_stages)})",
        ]


@contextmanager
def _scheduler(cluster: str | None):
    """A Dask cluster by address, else the local scheduler."""
    if cluster is None:
        with dask.config.set(scheduler=LOCAL_SCHEDULER):
            yield
        return
    from distributed import Client

    try:
        client = Client(cluster, timeout="10s")
    except (OSError, TimeoutError) as err:
        raise ShoalError(f"--cluster: cannot reach a Dask scheduler at '{cluster}': {err}") from None
    with client:
        yield


def _sources_for(pipeline: Pipeline, base_dir: Path) -> dict:
    return read_sources(pipeline.source, base_dir)


def _encode_label(frame, pipeline: Pipeline, ctx: StepContext, classes: list | None):
    """Classification labels become int64 codes of sorted classes; fitted classes are reused on apply."""
    label = pipeline.label
    if label is None:
        return frame, None
    if label.column not in frame.columns:
        if ctx.applying:
            return frame, classes  # new data at inference has no target
        raise ShoalError(f"label.column '{label.column}' is not a column after the steps; columns are: {', '.join(frame.columns)}")
    if label.kind == "regression":
        require_numeric(frame, [label.column], "label")
        return frame.assign(**{label.column: frame[label.column].astype("float64")}), None
    if classes is None:
        values, missing = dask.compute(frame[label.column].dropna().drop_duplicates(), frame[label.column].isna().sum())
        if missing:
            raise ShoalError(f"label '{label.column}' is missing in {missing} rows; drop them with a drop_rows step (missing_in)")
        classes = sorted(v.item() if hasattr(v, "item") else v for v in values)
        if len(classes) < 2:
            raise ShoalError(f"label '{label.column}' has {len(classes)} class; a classifier needs at least 2")
    coded = frame[label.column].map_partitions(_ordinal, classes, meta=(label.column, "int64"))
    return frame.assign(**{label.column: coded}), classes


def _features(frame, pipeline: Pipeline) -> list[str]:
    label = pipeline.label.column if pipeline.label else None
    if pipeline.output.features:
        return require_numeric(frame, pipeline.output.features, "output.features")
    return numeric_columns(frame, exclude=[label] if label else [])


def _pipeline_record(pipeline: Pipeline, base_dir: Path) -> dict:
    """The pipeline as saved in fitted.json, with source paths made absolute."""
    record = pipeline.model_dump(mode="json", exclude_none=True)
    for src, model in zip(record["source"], pipeline.source):
        src["path"] = resolve_path(model, base_dir)
        src.pop("package", None)
    return record


def run_prep(
    pipeline: str | Path | None,
    out: str | Path | None = None,
    *,
    cluster: str | None = None,
    apply_dir: str | Path | None = None,
    overwrite: bool = False,
) -> PrepResult:
    """Fit the pipeline's steps on its sources (or reapply a fitted dir's steps to new sources) and write out."""
    started = time.perf_counter()
    fitted = load_fitted(apply_dir) if apply_dir is not None else None
    if pipeline is not None:
        config, base_dir = load_pipeline(pipeline), Path(pipeline).resolve().parent
    elif fitted is not None:
        config, base_dir = None, Path(".")
    else:
        raise ShoalError("give a pipeline TOML (or --apply FITTED_DIR to reuse its sources)")
    if fitted is not None:
        saved = parse_pipeline(fitted["pipeline"], f"{apply_dir}/fitted.json")
        if config is not None and config.source:  # new data: its sources, the fitted steps
            saved = saved.model_copy(update={"source": config.source, "base": config.base})
        else:
            base_dir = Path(".")
        config = saved
    out = out if out is not None else config.output.dir
    if out is None:
        raise ShoalError("give an output directory: --out DIR, or [output] dir in the pipeline")
    out = Path(out)

    with _scheduler(cluster), staged_directory(out, overwrite) as staging:
        try:
            result = _run(config, base_dir, staging, fitted)
        except ValueError as err:
            if "Mismatched dtypes" in str(err):
                first = str(err).split("|")[0].strip()
                raise ShoalError(f"a CSV column changes type part way through: set its type in the source's dtypes ({first})") from None
            raise
    result.out_dir, result.seconds = out, time.perf_counter() - started
    result.applied_from = Path(apply_dir) if apply_dir is not None else None
    for name in ("manifest_path", "stats_path", "fitted_path"):
        setattr(result, name, out / getattr(result, name).name)
    return result


def _run(config: Pipeline, base_dir: Path, staging: Path, fitted: dict | None) -> PrepResult:
    applying = fitted is not None
    sources = _sources_for(config, base_dir)
    frame = sources[config.base_source]
    ctx = StepContext(sources=sources, label=config.label.column if config.label else None, applying=applying)
    ctx.scratch = staging / "_scratch"
    ctx.scratch.mkdir()
    params = fitted["params"] if applying else []
    for i, step in enumerate(config.step):
        ctx.where = f"step {i + 1} ({step.op})"
        if applying and step.fit_only:
            continue
        step.observe(frame, ctx)
        if not applying:
            params.append(step.fit(frame, ctx))
        frame = step.apply(frame, params[i], ctx)
    frame, classes = _encode_label(frame, config, ctx, fitted["label_classes"] if applying else None)
    frame = frame.optimize()  # the partition count dask will really run (it may fuse Parquet reads)
    if config.output.shards and config.output.shards != frame.npartitions:
        frame = frame.repartition(npartitions=config.output.shards)
    features = _features(frame, config)
    if applying:
        lost = [f for f in fitted["features"] if f not in frame.columns]
        if lost:
            raise ShoalError(f"--apply: the new data lacks feature '{lost[0]}' that the fitted pipeline produced")
        features = fitted["features"]
    if not ctx.stats:
        ctx.stats["output"] = column_statistics(frame)
    stats_path = write_stats(ctx.stats, staging)
    shards, shard_rows = write_shards(frame, staging)
    shutil.rmtree(ctx.scratch)
    if not shards:
        raise ShoalError("no rows are left after the steps; loosen the drop rules")
    label = ctx.label if ctx.label in frame.columns else None
    n_classes = len(classes) if classes is not None and label else None
    manifest = write_manifest(staging, shards, shard_rows, features, label, n_classes)
    fitted_path = save_fitted(staging, _pipeline_record(config, base_dir), params, classes, features)
    return PrepResult(
        out_dir=staging, rows=sum(shard_rows), shards=len(shards), features=features, label=label,
        label_classes=n_classes, manifest_path=manifest, stats_path=stats_path, fitted_path=fitted_path,
        stats_stages=list(ctx.stats),
    )  # fmt: skip

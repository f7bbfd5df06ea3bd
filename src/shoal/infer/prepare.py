"""Fitted preprocessing at inference: raw rows for a run trained on a `shoal prep` output go through that output's
fitted steps (`shoal prep --apply`), with the new file in place of the pipeline's base source."""

from __future__ import annotations

import json
from pathlib import Path

from shoal.infer.source import Source
from shoal.prep import run_prep
from shoal.prep.fitted import FILE, load_fitted


def fitted_dir_of(source: Source) -> Path | None:
    """The `shoal prep` output the run trained on, when it holds fitted parameters."""
    data = source.cfg.data
    if data.name != "parquet" or not data.path:
        return None
    path = Path(data.path)
    if not path.is_absolute():
        path = (Path.cwd() / path) if (Path.cwd() / path).exists() else source.run / path
    return path if (path / FILE).is_file() else None


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def prepare(raw: Path, fitted: Path, out: Path) -> Path:
    """Apply the fitted steps to `raw` (in place of the base source; joined tables stay the fitted ones) into `out`."""
    pipeline = load_fitted(fitted)["pipeline"]
    base = pipeline.get("base") or pipeline["source"][0]["name"]
    lines = [f"base = {json.dumps(base)}"]
    for src in pipeline["source"]:
        src = dict(src, path=str(Path(raw).resolve())) if src["name"] == base else dict(src)
        if src["name"] == base:
            src.pop("format", None)
            src.pop("partitions", None)
        lines.append("[[source]]")
        lines += [f"{k} = {_toml(v)}" for k, v in src.items() if v is not None]
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = out.with_name(f".{out.name}.toml")
    spec.write_text("\n".join(lines) + "\n")
    run_prep(spec, out, apply_dir=fitted, overwrite=True)
    spec.unlink()
    return out

"""One run directory as the report reads it: resolved config, run.json, and metrics.jsonl split by kind."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from shoal.errors import ShoalError


@dataclass
class Run:
    path: Path
    config: dict
    info: dict
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # layout, checkpoint, straggler, restart, choices of the sync strategy

    @property
    def name(self) -> str:
        return f"{self.config.get('name', 'job')} ({self.path.name})"

    def of_kind(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("kind") == kind]

    def series(self, key: str, records: list[dict] | None = None) -> tuple[list[float], list[float]]:
        """(steps, values) of the records that carry `key` as a number."""
        rows = [(r["step"], r[key]) for r in (self.train if records is None else records)
                if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and "step" in r]
        return [s for s, _ in rows], [v for _, v in rows]


def load_run(path: str | Path) -> Run:
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ShoalError(f"report: '{path}' is not a run directory (no metrics.jsonl); give the --out of a `shoal train` run")
    records = []
    for number, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(metrics.read_text().splitlines()):  # only a last line cut by a crash is forgiven
                raise ShoalError(f"report: {metrics} line {number} is not JSON") from None
    try:
        config = tomllib.loads((path / "config.toml").read_text()) if (path / "config.toml").is_file() else {}
    except tomllib.TOMLDecodeError as err:
        raise ShoalError(f"report: {path / 'config.toml'} is not valid TOML: {err}") from None
    try:
        info = json.loads((path / "run.json").read_text()) if (path / "run.json").is_file() else {}
    except json.JSONDecodeError:
        info = {}
    run = Run(path, config, info)
    for r in records:
        {"train": run.train, "eval": run.eval}.get(r.get("kind"), run.events).append(r)
    return run

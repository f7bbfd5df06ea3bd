"""Save and load what fitting learned, so --apply transforms new data exactly as it did the training data.

fitted.json holds the pipeline (steps, label, output; sources with absolute paths) and,
per step, its parameters as JSON; numpy arrays (PCA components, means) go to
step-NN-KEY.npy beside it. Python's JSON writes floats with repr, so they round-trip exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shoal.errors import ShoalError

FORMAT = "shoal-prep-fitted-v1"
FILE = "fitted.json"


def _store(params, directory: Path, prefix: str):
    if isinstance(params, np.ndarray):
        name = f"{prefix}.npy"
        np.save(directory / name, params)
        return {"__npy__": name}
    if isinstance(params, dict):
        return {k: _store(v, directory, f"{prefix}-{k}") for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [_store(v, directory, f"{prefix}-{i}") for i, v in enumerate(params)]
    if isinstance(params, np.generic):
        return params.item()
    return params


def _load(node, directory: Path):
    if isinstance(node, dict):
        if set(node) == {"__npy__"}:
            return np.load(directory / node["__npy__"])
        return {k: _load(v, directory) for k, v in node.items()}
    if isinstance(node, list):
        return [_load(v, directory) for v in node]
    return node


def save_fitted(directory: Path, pipeline: dict, params: list, label_classes: list | None, features: list[str]) -> Path:
    body = {
        "format": FORMAT,
        "pipeline": pipeline,
        "params": [_store(p, directory, f"step-{i + 1:02d}") for i, p in enumerate(params)],
        "label_classes": label_classes,
        "features": features,
    }
    path = directory / FILE
    path.write_text(json.dumps(body, indent=1))
    return path


def load_fitted(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / FILE
    if not path.is_file():
        raise ShoalError(f"--apply: '{directory}' holds no {FILE}; give the output directory of a fitted `shoal prep` run")
    body = json.loads(path.read_text())
    if body.get("format") != FORMAT:
        raise ShoalError(f"--apply: {path} has format {body.get('format')!r}, expected {FORMAT!r}")
    body["params"] = [_load(p, directory) for p in body["params"]]
    return body

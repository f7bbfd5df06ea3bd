"""Every job-file key with its default and description, generated from the config models (one source of truth)."""

from __future__ import annotations

from pydantic import BaseModel

from shoal.config import JobConfig


def _rows(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _rows(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field.default, field.description or ""


def render_markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, desc in _rows(JobConfig):
        lines.append(f"| `{key}` | `{default!r}` | {desc.replace('|', chr(92) + '|')} |")  # a bare | would end the cell
    return "\n".join(lines)

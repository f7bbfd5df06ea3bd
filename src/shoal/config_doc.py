"""Every job-file key with its default and description, generated from the config models (one source of truth):
a Markdown table for docs/config.md, and a sectioned, wrapped listing for a terminal."""

from __future__ import annotations

import shutil
import textwrap
from typing import Literal, get_args, get_origin

from pydantic import BaseModel

from shoal.config import JobConfig


def _choices(annotation) -> tuple[str, ...]:
    return tuple(str(a) for a in get_args(annotation)) if get_origin(annotation) is Literal else ()


def _meaning(field) -> str:
    """The description, with an enumerated key's choices when the description does not name them all."""
    desc = field.description or ""
    choices = _choices(field.annotation)
    if choices and not all(c in desc for c in choices):
        desc = f"{desc} (choices: {', '.join(choices)})" if desc else f"choices: {', '.join(choices)}"
    return desc


def _rows(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _rows(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field.default, _meaning(field)


def render_markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, desc in _rows(JobConfig):
        lines.append(f"| `{key}` | `{default!r}` | {desc.replace('|', chr(92) + '|')} |")  # a bare | would end the cell
    return "\n".join(lines)


def render_text(width: int | None = None) -> str:
    """Sections as in a job file, `key = default` and the meaning wrapped under it."""
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    lines, section = [], None
    for key, default, desc in _rows(JobConfig):
        where, _, leaf = key.rpartition(".")
        if where != section:
            section = where
            lines += ["", f"[{where}]"] if where else []
        lines.append(f"{leaf} = {default!r}")
        lines += textwrap.wrap(desc, width - 4, initial_indent="    ", subsequent_indent="    ") if desc else []
    return "\n".join(lines).strip("\n")

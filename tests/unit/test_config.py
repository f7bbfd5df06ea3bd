"""The job file: defaults, overrides with type checking, the resolved config round-trips, docs stay true."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.config import JobConfig, ScheduleConfig, apply_overrides, load_job, to_toml, validate
from shoal.config_doc import render_markdown
from shoal.errors import ShoalError
from shoal.train.optim import lr_factor


def test_an_empty_job_is_valid():
    assert validate({}) == JobConfig()


def test_overrides_are_typed_as_toml_literals():
    raw = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", "optimizer.betas=[0.8, 0.9]", "name=run7",
                                                     "data.shuffle=false", "optimizer.lr=1e-3"])
    cfg = validate(raw)
    assert cfg.train.epochs == 3 and cfg.optimizer.betas == (0.8, 0.9) and cfg.name == "run7"
    assert cfg.data.shuffle is False and cfg.optimizer.lr == pytest.approx(1e-3)


def test_override_with_the_wrong_type_names_the_key():
    with pytest.raises(ShoalError, match="train.epochs"):
        validate(apply_overrides({}, ["train.epochs=lots"]))


def test_resolved_config_round_trips(tmp_path: Path):
    cfg = validate({"name": 'quote"d', "model": {"kwargs": {"depth": 3, "act": "gelu"}}, "train": {"clip_grad_norm": 0.5}})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    assert load_job(path) == cfg


def test_warmup_then_cosine():
    cfg = ScheduleConfig(name="cosine", warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, 14, cfg) for s in range(14)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0) and factors[-1] > 0.1
    assert lr_factor(14, 14, cfg) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))


def test_docs_config_reference_is_current():
    doc = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    assert render_markdown() in doc, "docs/config.md is stale: regenerate it with `shoal config --markdown`"


def test_shoal_config_reads_in_a_terminal_and_names_every_choice():
    """By section, `key = default` and the meaning under it (no Markdown escapes); enumerated keys list their choices."""
    from shoal.config_doc import render_text

    text = render_text(100)
    assert "[train]" in text and "\nglobal_batch_size = " in text and "\\|" not in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "choices: sgd, adamw" in render_markdown() or "sgd (with momentum" in render_markdown()
    assert "(choices: contiguous, round_robin, random)" in render_markdown()
    assert "| `optimizer.lr` | `0.05` |  |" not in render_markdown()  # every key says what it means

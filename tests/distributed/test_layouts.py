"""Every model-parallel layout equals single-process training: per-step losses, gathered final
parameters (model.pt) and evaluation, within 1e-5 in fp32, for the gpt and mlp models.

Gradient clipping is on in every case (by the global norm), so the norm is checked too.
"""

from __future__ import annotations

import layout_workers as lw
import pytest

from shoal.distributed import shutdown
from shoal.launch.local import launch_local

pytestmark = pytest.mark.dist
EXACT = 1e-5
MODELS = ["gpt", "mlp"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    try:
        return lw.run_cases(str(root), [(m, "single", {}) for m in lw.MODELS])
    finally:
        shutdown()


def _spawn(tmp_path_factory, layouts: dict, nproc: int, extra: dict | None = None) -> dict:
    root = tmp_path_factory.mktemp(f"world{nproc}")
    cases = [(m, name, {"parallel": par}) for name, par in layouts.items() for m in MODELS if m == "gpt" or name not in lw.GPT_ONLY]
    cases += [(m, name, overrides) for (m, name), overrides in (extra or {}).items()]
    return launch_local(lw.run_cases, (str(root), cases), nproc=nproc)[0]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return _spawn(tmp_path_factory, lw.LAYOUTS_2, 2, lw.EXTRA_2)


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return _spawn(tmp_path_factory, lw.LAYOUTS_4, 4)


def assert_same_run(run: dict, ref: dict) -> None:
    assert len(run["losses"]) == len(ref["losses"]) == 4
    assert max(abs(a - b) for a, b in zip(run["losses"], ref["losses"])) < EXACT, (run["losses"], ref["losses"])
    assert run["params"].keys() == ref["params"].keys()
    for key, value in ref["params"].items():
        got = run["params"][key]
        assert got.shape == value.shape, key
        assert (got - value).abs().max().item() < EXACT, key
    assert abs(run["eval"]["loss"] - ref["eval"]["loss"]) < EXACT
    assert abs(run["eval"]["accuracy"] - ref["eval"]["accuracy"]) < EXACT


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("layout", list(lw.LAYOUTS_2))
def test_two_process_layouts_equal_single_process(two, single, model, layout):
    if model != "gpt" and layout in lw.GPT_ONLY:
        pytest.skip("meta init needs init_parameter(), which only the gpt has")
    assert_same_run(two[(model, layout)], single[(model, "single")])


@pytest.mark.parametrize("model, case", list(lw.EXTRA_2))
def test_other_ways_to_ask_for_a_layout_equal_single_process(two, single, model, case):
    assert_same_run(two[(model, case)], single[(model, "single")])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("layout", list(lw.LAYOUTS_4))
def test_four_process_layouts_equal_single_process(four, single, model, layout):
    assert_same_run(four[(model, layout)], single[(model, "single")])


def test_split_follows_the_stage_owners_speed(two):
    even = two[("mlp", "pp2-1f1b")]["layout"][0]["pipeline"]
    skewed = two[("mlp", "pp2-unequal-speeds")]["layout"][0]["pipeline"]
    assert len(skewed["stages"][0]) > len(even["stages"][0])  # the 3x faster owner takes more layers
    named = two[("gpt", "pp2-split-by-name-accum")]["layout"][0]["pipeline"]
    assert named["stages"] == [["tok_embeddings", "layers.0"], ["layers.1", "norm", "output"]]


def test_runs_report_layout_and_memory(two):
    run = two[("gpt", "pp2-1f1b")]
    (layout,) = run["layout"]
    assert layout["layout"] == "pp=2" and len(layout["pipeline"]["stages"]) == 2
    assert all(r["state_mb"] > 0 and r["peak_rss_mb"] > 0 and len(r["peak_rss_mb_per_rank"]) == 2 for r in run["train"])
    assert len(set(run["train"][0]["state_mb_per_rank"])) == 2  # the two stages hold different layers
    sharded = two[("gpt", "fsdp2")]["train"][0]["state_mb"]
    assert sharded < 0.6 * two[("gpt", "tp2")]["train"][0]["state_mb"] * 2

"""Transformers models as transformers builds them (tiny GPT-2 and BERT from their config classes, no download)
train under every layout exactly as in one process: per-step losses, gathered model.pt and evaluation within 1e-5.

Both routes: `shoal.fit` on the model and datasets-style dict rows (ModelOutput outputs, attention-masked padding),
and `shoal train`'s worker on a job file (`model.name = "hf:gpt2"` / `"hf:bert"`, an npz of named arrays). Every
third row is padded, so ranks hold different numbers of scored tokens: the GPT-2 loss is the token-level mean over
the global batch, which a per-rank mean would miss.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

import hf_workers as hw  # noqa: E402

from shoal.distributed import shutdown  # noqa: E402
from shoal.launch.local import launch_local  # noqa: E402

pytestmark = pytest.mark.dist
EXACT = 1e-5
KINDS = ["gpt2", "bert"]
ROUTES = ["fit", "job"]
UNTIED = hw.UNTIED
# (route, model, name) -> overrides. The job route runs every layout; fit (the model as transformers returns it,
# datasets-style rows) runs dp and tp.
LAYOUTS_2 = {"dp2": {}, "fsdp2": {"parallel": {"fsdp": 2}}, "tp2": {"parallel": {"tp": 2}},
             "fsdp2-checkpointing-accum": {"parallel": {"fsdp": 2, "activation_checkpointing": True}, "train": {"grad_accum": 2}},
             "pp2": {"parallel": {"pp": 2}}}
FIT_LAYOUTS = ("dp2", "tp2")
CASES_2 = [("job", k, n, hw.merged(UNTIED, o) if n.startswith("pp") and k == "gpt2" else o) for n, o in LAYOUTS_2.items() for k in KINDS]
CASES_2 += [("fit", k, n, LAYOUTS_2[n]) for n in FIT_LAYOUTS for k in KINDS]
CASES_2 += [("job", "llama", n, LAYOUTS_2[n]) for n in ("tp2", "pp2")]  # Llama: its plan (grouped key/value heads), its chain
# A checkpoint written under tp=2 after 3 steps, resumed under fsdp=2 for 2 more: equals 5 steps in one process.
SAVED = {"parallel": {"tp": 2}, "checkpoint": {"at_end": True}}
CASES_2 += [("job", "gpt2", "tp2-saved", SAVED), ("job", "gpt2", "fsdp2-resumed", {"parallel": {"fsdp": 2}, "train": {"steps": 5},
                                                                                  "resume_of": "tp2-saved"})]
# And back: written under fsdp=2 (c_attn whole on each tp rank), resumed under tp=2 (c_attn split in q|k|v blocks).
CASES_2 += [("job", "gpt2", "fsdp2-saved", {"parallel": {"fsdp": 2}, "checkpoint": {"at_end": True}}),
            ("job", "gpt2", "tp2-resumed", {"parallel": {"tp": 2}, "train": {"steps": 5}, "resume_of": "fsdp2-saved"})]
CASES_2 += [("pq", k, "dp2", {}) for k in KINDS]  # Parquet list columns, each rank reading its rows: equal to the npz in one process
CASES_2 += [("tt", "bert", "pp2", LAYOUTS_2["pp2"])]  # BERT sentence pairs (token_type_ids) through the pipeline's stage 0
# parallel.meta_init: built on the meta device, only the local shards materialized (buffers too; Llama's rotary table,
# which sits in no stage, rebuilt): equal to the ordinary single-process build.
META = {"gpt2": ("fsdp2", "tp2"), "bert": ("tp2",), "llama": ("pp2",)}
CASES_2 += [("job", k, f"{n}-meta", hw.merged(LAYOUTS_2[n], {"parallel": {"meta_init": True}})) for k, names in META.items() for n in names]
LAYOUTS_4 = {"fsdp2-tp2": {"parallel": {"fsdp": 2, "tp": 2}}}
CASES_4 = [("job", k, n, o) for n, o in LAYOUTS_4.items() for k in KINDS] + [("job", "gpt2", "tp4", {"parallel": {"tp": 4}})]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-single")
    try:
        cases = [(r, k, "single", {}) for r in ROUTES for k in KINDS]
        cases += [("job", k, "single-accum", {"train": {"grad_accum": 2}}) for k in KINDS]
        cases += [("job", "gpt2", "single-untied", UNTIED), ("job", "llama", "single", {})]
        cases += [("job", "gpt2", "single-5", {"train": {"steps": 5}}), ("tt", "bert", "single", {})]
        return hw.run_cases(str(root), cases)
    finally:
        shutdown()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-two")
    return launch_local(hw.run_all, (str(root), CASES_2, True), nproc=2)[0]


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-four")
    return launch_local(hw.run_all, (str(root), CASES_4), nproc=4)[0]


def assert_same(run: dict, ref: dict) -> None:
    assert len(run["losses"]) == len(ref["losses"]) in (3, 5)
    assert max(abs(a - b) for a, b in zip(run["losses"], ref["losses"])) < EXACT, (run["losses"], ref["losses"])
    assert run["params"].keys() == ref["params"].keys()
    for key, value in ref["params"].items():
        assert (run["params"][key] - value).abs().max().item() < EXACT, key
    for metric in ("loss", "accuracy"):
        assert abs(run["eval"][metric] - ref["eval"][metric]) < EXACT, metric


def _reference(single, route, kind, name):
    if route == "pq":
        return single[("job", kind, "single")]
    if name.endswith("-resumed"):
        return single[(route, kind, "single-5")]
    if name.endswith("-meta"):
        return single[(route, kind, "single")]
    if "accum" in name:
        return single[(route, kind, "single-accum")]
    return single[(route, kind, "single-untied" if name.startswith("pp") and kind == "gpt2" else "single")]


@pytest.mark.parametrize("case", [c[:3] for c in CASES_2], ids=lambda c: "-".join(c))
def test_two_process_layouts_equal_one_process(two, single, case):
    route, kind, name = case
    assert_same(two[case], _reference(single, route, kind, name))


def test_token_type_ids_reach_the_model(single):
    """They change the run, so a pipeline that dropped them would not equal one process (tt-bert-pp2 above)."""
    key = "bert.embeddings.token_type_embeddings.weight"  # its row 1 learns only from tokens of type 1
    with_types, without = single[("tt", "bert", "single")]["params"][key], single[("job", "bert", "single")]["params"][key]
    assert (with_types - without).abs().max().item() > 10 * EXACT


@pytest.mark.parametrize("kind", KINDS)
def test_fsdp_times_tp_equals_one_process(four, single, kind):
    assert_same(four[("job", kind, "fsdp2-tp2")], single[("job", kind, "single")])


def test_gpt2_under_tp4_equals_one_process(four, single):
    assert_same(four[("job", "gpt2", "tp4")], single[("job", "gpt2", "single")])  # c_attn's all-to-all, blocks split 4 ways


def test_gpt2_c_attn_is_sharded_under_tp(two):
    """Every matrix of a block, the fused q|k|v c_attn too, holds 1/2 of its weight and bias on each rank."""
    whole, local = two["shards"]["whole"], two["shards"]["local"]
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight"):
        assert local[name] == (whole[name][0], whole[name][1] // 2)
    assert local["transformer.h.0.attn.c_attn.bias"] == (whole["transformer.h.0.attn.c_attn.bias"][0] // 2,)
    blocks = [n for n in whole if ".h." in n and not n.rsplit(".", 2)[-2].startswith("ln")
              and not n.endswith("c_proj.bias")]  # row-parallel biases stay whole
    assert sum(math.prod(local[n]) for n in blocks) * 2 == sum(math.prod(whole[n]) for n in blocks)


@pytest.mark.parametrize("case", [("job", "gpt2", "tp2"), ("fit", "gpt2", "tp2"), ("job", "gpt2", "tp2-resumed")], ids="-".join)
def test_model_pt_under_tp_loads_into_a_fresh_transformers_gpt2(two, single, case):
    """model.pt gathered from c_attn's shards has transformers' fused q|k|v layout: loaded with strict=True into a
    fresh GPT2LMHeadModel it gives the logits of one process's model.pt."""
    route, kind, name = case
    ref = _reference(single, route, kind, name)
    x = torch.as_tensor(hw.token_data()["input_ids"][:4])
    logits = []
    for params in (two[case]["params"], ref["params"]):
        model = hw.hf_model("gpt2") if route == "fit" else hw.job_model("gpt2")
        model.load_state_dict(params, strict=True)
        logits.append(model.eval()(input_ids=x).logits)
    assert (logits[0] - logits[1]).abs().max().item() < EXACT


def test_lm_evaluation_reports_perplexity_from_user_data(single):
    ev = single[("job", "gpt2", "single")]["eval"]
    assert ev["perplexity"] == pytest.approx(__import__("math").exp(ev["loss"]))
    assert "perplexity" not in single[("job", "bert", "single")]["eval"]


@pytest.mark.parametrize("kind", KINDS)
def test_model_pt_loads_into_a_fresh_transformers_model(single, kind):
    model = hw.hf_model(kind)
    model.load_state_dict(single[("fit", kind, "single")]["params"], strict=True)


def test_tied_embeddings_across_pipeline_stages_are_refused_with_the_fix(two):
    message = two["tied"]
    assert message is not None and "\n" not in message
    assert "shared by two pipeline stages (tied weights); set tie_word_embeddings = false in model.kwargs" in message


def test_an_automatic_plan_that_changes_the_model_is_refused_with_one_line(two):
    message = two["refused"]
    assert message is not None and "\n" not in message
    assert "automatic tensor-parallel plan for TwoBranches does not reproduce the unsharded model" in message


@pytest.mark.parametrize("kind", KINDS)
def test_parquet_token_columns_are_read_per_rank(two, kind):
    reads = two[("pq", kind, "dp2")]["data"][0]["ranks"]  # the model equals one process: test_two_process_layouts_equal_one_process
    assert [r["rows_read"] for r in reads] == [18 + 6, 18 + 6], reads  # half of the 36 training rows' epoch, half of the 12 evaluation rows

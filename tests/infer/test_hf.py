"""`hf:` models (transformers built from a config, no download) in `shoal infer` and `shoal serve`: a run trained
on named arrays infers replicated (uneven shards), under --split tp and --split pp, and serves, all equal to the
transformers model on every sample at once in one process (1e-5); what is not supported is refused with one line."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from serving import Server

pytest.importorskip("transformers")

from shoal.cli import main  # noqa: E402
from shoal.infer import build, read_outputs, resolve  # noqa: E402
from shoal.infer.job import InferJob  # noqa: E402
from shoal.infer.shards import shard_range  # noqa: E402
from shoal.infer.worker import replicated_worker  # noqa: E402

GPT2 = """name = "hf-gpt2"
[model]
name = "hf:gpt2"
kwargs = {{n_layer = 2, n_embd = 16, n_head = 4, tie_word_embeddings = false}}
[data]
name = "npz"
path = "{path}"
[train]
global_batch_size = 8
steps = 2
"""
BERT = GPT2.replace("hf-gpt2", "hf-bert").replace("hf:gpt2", "hf:bert").replace(
    "n_layer = 2, n_embd = 16, n_head = 4, tie_word_embeddings = false",
    "hidden_size = 16, num_hidden_layers = 2, num_attention_heads = 4, intermediate_size = 32, vocab_size = 64")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from conftest import train

    tmp = tmp_path_factory.mktemp("hf")
    g = np.random.default_rng(0)
    ids = g.integers(1, 64, size=(40, 8))
    mask = np.ones_like(ids)
    mask[::3, 5:] = 0  # every third row padded on the right
    ids[mask == 0] = 0
    np.savez(tmp / "tokens.npz", input_ids=ids, attention_mask=mask)
    np.savez(tmp / "classes.npz", input_ids=ids, attention_mask=mask, labels=ids[:, 1] % 3)
    np.savez(tmp / "new.npz", input_ids=ids[:11], attention_mask=mask[:11])  # 11 rows: shards of 4, 4, 3
    np.savez(tmp / "new_classes.npz", input_ids=ids[:11], attention_mask=mask[:11], labels=ids[:11, 1] % 3)
    return {"gpt2": train(tmp, "gpt2", GPT2.format(path=tmp / "tokens.npz")),
            "bert": train(tmp, "bert", BERT.format(path=tmp / "classes.npz")), "tmp": tmp}


def reference(run, data) -> np.ndarray:
    z = np.load(data)
    with torch.no_grad():
        out = build(resolve(run))(input_ids=torch.as_tensor(z["input_ids"]), attention_mask=torch.as_tensor(z["attention_mask"]))
    return out.logits.numpy()


def shoal(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code


@pytest.mark.parametrize("kind,data", [("gpt2", "new.npz"), ("bert", "new_classes.npz")])
def test_replicas_of_an_hf_model_equal_one_process_in_order(hf, tmp_path, monkeypatch, kind, data):
    """3 replicas one after another in this process (shards 4, 4, 3), against the model on all 11 rows at once."""
    job = InferJob(str(hf[kind]), str(hf["tmp"] / data), str(tmp_path), batch=2, rows=11)
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        assert replicated_worker(job)["rows"] == shard_range(11, 3, rank)[1] - shard_range(11, 3, rank)[0]
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [f"part-{r:05d}.npz" for r in range(3)]}))
    out, expected = read_outputs(tmp_path), reference(hf[kind], hf["tmp"] / data)
    assert out["outputs"].shape == expected.shape and np.abs(out["outputs"] - expected).max() <= 1e-5
    assert (out["predictions"] == expected.argmax(-1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("split", ["tp", "pp"])
def test_a_split_hf_model_equals_one_process(hf, tmp_path, split):
    """GPT-2 over 2 ranks (its tensor-parallel plan; its pipeline chain, untied head): 11 rows in batches of 4."""
    import subprocess
    import sys

    out = tmp_path / split
    proc = subprocess.run([sys.executable, "-m", "shoal", "infer", str(hf["gpt2"]), "--data", str(hf["tmp"] / "new.npz"), "--out", str(out),
                           "--nproc", "2", "--split", split, "--batch", "4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, expected = read_outputs(out)["outputs"], reference(hf["gpt2"], hf["tmp"] / "new.npz")
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5
    one = tmp_path / "one"
    assert shoal("infer", str(hf["gpt2"]), "--data", str(hf["tmp"] / "new.npz"), "--out", str(one)) == 0
    metrics, ref = json.loads((out / "metrics.json").read_text()), json.loads((one / "metrics.json").read_text())
    assert abs(metrics["loss"] - ref["loss"]) <= 1e-5  # per scored token: the padding is not scored


def test_generation_and_bad_named_arrays_are_refused_with_one_line(hf, tmp_path, capsys):
    np.savez(tmp_path / "long.npz", input_ids=np.ones((2, 9), np.int64))
    np.savez(tmp_path / "odd.npz", input_ids=np.ones((2, 8), np.int64), pixels=np.zeros(2))
    np.savez(tmp_path / "vocab.npz", input_ids=np.full((2, 8), 64))
    cases = [(["--generate", "--prompt", "hi"], "only the gpt generates"), (["--data", str(tmp_path / "long.npz")], "at most 8"),
             (["--data", str(tmp_path / "odd.npz")], "array 'pixels'"), (["--data", str(tmp_path / "vocab.npz")], "token 64")]
    for extra, words in cases:
        assert shoal("infer", str(hf["gpt2"]), "--out", str(tmp_path / "o"), *extra) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_service_answers_an_hf_model_as_one_process(hf):
    z = np.load(hf["tmp"] / "new.npz")
    expected = reference(hf["gpt2"], hf["tmp"] / "new.npz")
    server = Server(hf["gpt2"], "--max-batch", "16").wait_ready()
    try:
        samples = [{"input_ids": z["input_ids"][i].tolist(), "attention_mask": z["attention_mask"][i].tolist()} for i in range(11)]
        status, _, body = server.request("POST", "/v1/predict", {"inputs": samples})
        assert status == 200, body
        assert np.abs(np.array(body["outputs"]) - expected).max() <= 1e-5 and body["predictions"] == expected.argmax(-1).tolist()
        status, _, body = server.request("POST", "/v1/predict", {"inputs": [z["input_ids"][1].tolist()]})  # ids alone: mask all ones
        assert status == 200 and np.abs(np.array(body["outputs"]) - expected[1:2]).max() <= 1e-5
        for bad, words in [([[1, 2, 3]], "has 3 tokens, the model takes 8"), ([[64] * 8], "outside the vocabulary 0..63"),
                           ([{"input_ids": [1] * 8, "token_type_ids": [0] * 8}], "has field 'token_type_ids'"),
                           ([{"attention_mask": [1] * 8}], "has no 'input_ids'"), ([{"input_ids": [1.5] * 8}], "list of integers"),
                           ([{"input_ids": [1] * 8, "attention_mask": [2] * 8}], "0 and 1 only")]:
            status, _, body = server.request("POST", "/v1/predict", {"inputs": bad})
            assert status == 422 and words in body["error"], (bad, body)
        assert server.request("POST", "/v1/generate", {"prompt": "hi"})[0] == 404
    finally:
        server.stop(signal.SIGKILL)

"""`shoal infer`: replicated and split outputs equal one process's (1e-5) in input order, labelled inputs are
scored, bad inputs are one line and exit code 2, and the output directory appears whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.cli import main
from shoal.infer import build, read_outputs, resolve
from shoal.infer.inputs import read
from shoal.infer.job import InferJob
from shoal.infer.shards import shard_range
from shoal.infer.worker import replicated_worker


def cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "shoal", "infer", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def shoal(*args: str) -> int:
    """The CLI in this process (it always ends in SystemExit): its exit code."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code


def reference(run: Path, data: Path) -> torch.Tensor:
    """One process, no Shoal batching: the model on every sample at once."""
    source = resolve(run)
    with torch.no_grad():
        return build(source)(torch.from_numpy(np.load(data)["x"]).to(torch.float32 if source.task != "lm" else torch.long))


def test_shards_cover_the_inputs_in_order():
    for n in (0, 1, 5, 101):
        for world in (1, 2, 3, 7):
            bounds = [shard_range(n, world, r) for r in range(world)]
            assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1


def test_a_replica_reads_only_the_parquet_files_of_its_shard(runs, tmp_path):
    """A `shoal prep`-style directory of three files (40, 25, 36 rows): any row range equals slicing the whole."""
    import json as json_

    import pandas as pd

    x = np.load(runs["digits"])["x"].reshape(101, 64)
    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(64)]).assign(label=np.load(runs["digits"])["y"])
    bounds = [(0, 40), (40, 65), (65, 101)]
    for i, (a, b) in enumerate(bounds):
        frame.iloc[a:b].to_parquet(tmp_path / f"part-{i}.parquet")
    (tmp_path / "manifest.json").write_text(json_.dumps({"shards": [f"part-{i}.parquet" for i in range(3)],
                                                         "features": list(frame.columns[:64]), "label": "label"}))
    source = resolve(runs["mlp"])
    source = type(source)(source.run, source.weights, source.cfg, type(source.spec)((64,), 10, 1, 1))
    whole = read(tmp_path, source)
    for rows in [(0, 101), (0, 34), (34, 68), (68, 101), (39, 41), (65, 65), (100, 101)]:
        part = read(tmp_path, source, rows)
        assert torch.equal(part.x, whole.x[rows[0] : rows[1]]) and torch.equal(part.y, whole.y[rows[0] : rows[1]]), rows


def test_each_replica_writes_its_shard_and_the_shards_concatenate_to_one_process(runs, tmp_path, monkeypatch):
    """What each of 3 replicas does, one after another in this process (uneven shards 34, 34, 33)."""
    job = InferJob(str(runs["mlp"]), str(runs["digits"]), str(tmp_path), batch=8, rows=101)
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        assert replicated_worker(job)["rows"] == shard_range(101, 3, rank)[1] - shard_range(101, 3, rank)[0]
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [f"part-{r:05d}.npz" for r in range(3)]}))
    out = read_outputs(tmp_path)
    expected = reference(runs["mlp"], runs["digits"])
    assert out["outputs"].shape == (101, 10)
    assert np.abs(out["outputs"] - expected.numpy()).max() <= 1e-5
    assert (out["predictions"] == expected.argmax(1).numpy()).all()


@pytest.mark.parametrize("mode, note", [("on", "prepacked 2 linear layers for oneDNN"), ("off", "linear layers not prepacked (--prepack off)")])
def test_prepacked_and_plain_layers_give_the_models_outputs(runs, tmp_path, mode, note):
    out = tmp_path / mode
    assert shoal("infer", str(runs["mlp"]), "--data", str(runs["digits"]), "--out", str(out), "--prepack", mode) == 0
    assert json.loads((out / "manifest.json").read_text())["prepack"].startswith(note)
    assert np.abs(read_outputs(out)["outputs"] - reference(runs["mlp"], runs["digits"]).numpy()).max() <= 1e-5


def test_an_unknown_prepack_mode_is_one_line_and_exit_code_2(runs, tmp_path, capsys):
    assert shoal("infer", str(runs["mlp"]), "--data", str(runs["digits"]), "--out", str(tmp_path / "x"), "--prepack", "fast") == 2
    assert "--prepack 'fast': choose one of auto, on, off" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_two_replicas_through_the_cli_equal_one_process(runs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert shoal("infer", str(runs["mlp"]), "--data", str(runs["digits"]), "--out", str(one), "--batch", "16") == 0
    cli(str(runs["mlp"]), "--data", str(runs["digits"]), "--out", str(two), "--nproc", "2", "--batch", "16")
    a, b = read_outputs(one), read_outputs(two)
    assert np.abs(a["outputs"] - b["outputs"]).max() <= 1e-5 and (a["predictions"] == b["predictions"]).all()
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["shards"] == ["part-00000.npz", "part-00001.npz"] and manifest["rows"] == [51, 50]
    assert "oneDNN ran at" in manifest["prepack"] or manifest["prepack"].startswith("prepacked"), manifest  # auto: timed
    metrics = json.loads((two / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "precision", "recall", "f1", "loss"}
    assert metrics == json.loads((one / "metrics.json").read_text())
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_pipeline_split_of_the_gpt_equals_one_process(runs, tmp_path):
    """Two stages, micro-batches of 2, 9 sequences: the last batch is padded to the schedule's shape and trimmed."""
    out = tmp_path / "pp"
    cli(str(runs["gpt"]), "--data", str(runs["text"]), "--out", str(out), "--nproc", "2", "--split", "pp", "--batch", "4")
    got = read_outputs(out)["outputs"]
    expected = reference(runs["gpt"], runs["text"])[..., : resolve(runs["gpt"]).spec.num_classes]
    assert got.shape == tuple(expected.shape) and np.abs(got - expected.numpy()).max() <= 1e-5
    assert {"loss", "perplexity"} <= set(json.loads((out / "metrics.json").read_text()))


def test_tensor_parallel_prediction_from_a_checkpoint_equals_one_process_in_order(runs, tmp_path):
    """--split tp over 2 ranks, the gpt's DCP checkpoint loaded into the halves; 9 sequences in batches of 4
    (4, 4 and a short 1): outputs equal one process's row for row (1e-5), predictions too, metrics scored."""
    ckpt = sorted((runs["gpt"] / "checkpoints").glob("step-*"))[-1]
    one, tp = tmp_path / "one", tmp_path / "tp"
    assert shoal("infer", str(ckpt), "--data", str(runs["text"]), "--out", str(one), "--batch", "4") == 0
    cli(str(ckpt), "--data", str(runs["text"]), "--out", str(tp), "--nproc", "2", "--split", "tp", "--batch", "4")
    a, b = read_outputs(one), read_outputs(tp)
    expected = reference(runs["gpt"], runs["text"])[..., : resolve(runs["gpt"]).spec.num_classes].numpy()
    assert b["outputs"].shape == expected.shape == (9, 16, resolve(runs["gpt"]).spec.num_classes)
    assert np.abs(b["outputs"] - expected).max() <= 1e-5 and np.abs(a["outputs"] - b["outputs"]).max() <= 1e-5
    assert (b["predictions"] == a["predictions"]).all()
    manifest = json.loads((tp / "manifest.json").read_text())
    assert manifest["split"] == "tp" and manifest["rows"] == [9] and manifest["processes"] == 2
    metrics = json.loads((tp / "metrics.json").read_text())
    assert abs(metrics["loss"] - json.loads((one / "metrics.json").read_text())["loss"]) <= 1e-5


def test_tensor_parallel_generation_from_a_checkpoint_equals_one_process(runs, tmp_path):
    """A DCP checkpoint loads straight into the tensor-parallel halves; the cached generation runs on each rank's heads."""
    ckpt = sorted((runs["gpt"] / "checkpoints").glob("step-*"))[-1]
    args = ["--generate", "--prompt", "ROMEO:", "--max-new-tokens", "12", "--samples", "2", "--temperature", "0.8", "--top-k", "5"]
    main_out, tp_out = tmp_path / "one", tmp_path / "tp"
    assert shoal("infer", str(ckpt), "--out", str(main_out), *args) == 0
    cli(str(ckpt), "--out", str(tp_out), "--nproc", "2", "--split", "tp", *args)
    a, b = read_outputs(main_out)["tokens"], read_outputs(tp_out)["tokens"]
    assert a.shape == (2, 6 + 12) and (a == b).all()
    lines = [json.loads(line) for line in (tp_out / "generated.jsonl").read_text().splitlines()]
    assert [line["seed"] for line in lines] == [0, 1] and all(line["text"].startswith("ROMEO:") for line in lines)


def test_pipeline_generation_with_the_cache_equals_recomputing(runs, tmp_path):
    """--split pp over 2 stages with the key-value cache (each stage keeps its blocks' keys and values, the new
    position goes stage to stage): the same tokens as one process recomputing the whole sequence every step."""
    from shoal.infer.generate import encode, generate

    out = tmp_path / "pp"
    cli(str(runs["gpt"]), "--out", str(out), "--nproc", "2", "--split", "pp", "--generate", "--prompt", "ROMEO:",
        "--max-new-tokens", "20", "--samples", "2", "--temperature", "0.9", "--top-k", "8", "--seed", "3")
    source = resolve(runs["gpt"])
    model = build(source)
    expected = [generate(model, encode("ROMEO:"), 20, source.spec.num_classes, 0.9, 8, seed=3 + i, cache=False)[0] for i in range(2)]
    got = read_outputs(out)["tokens"]
    assert got.shape == (2, 6 + 20) and (got == torch.stack(expected).numpy()).all()
    assert json.loads((out / "manifest.json").read_text())["kv_cache"] is True


BAD = [
    (["--nproc", "0"], "--nproc"),
    (["--split", "dp"], "--split"),
    (["--batch", "0"], "--batch"),
    (["--data", "missing.npz"], "missing.npz"),
    (["--split", "pp"], "--split pp"),
]


@pytest.mark.parametrize("extra,needle", BAD)
def test_bad_options_are_one_line_and_exit_2(runs, tmp_path, capsys, extra, needle, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["infer", str(runs["mlp"]), "--out", str(tmp_path / "o")]
    if "--data" not in extra:
        args += ["--data", str(runs["digits"])]
    with pytest.raises(SystemExit) as exit_:
        main([*args, *extra])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_bad_data_files_name_the_file_and_what_is_wrong(runs, tmp_path, capsys):
    cases = {
        "shape.npz": ({"x": np.zeros((3, 4), np.float32)}, "shape [4]"),
        "nox.npz": ({"z": np.zeros(3)}, "no array 'x'"),
        "nan.npz": ({"x": np.full((2, 1, 8, 8), np.nan, np.float32)}, "NaN"),
        "labels.npz": ({"x": np.zeros((2, 1, 8, 8), np.float32), "y": np.array([0, 99])}, "class codes"),
    }
    for name, (arrays, needle) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(SystemExit) as exit_:
            main(["infer", str(runs["mlp"]), "--data", str(tmp_path / name), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and name in err and needle in err and len(err.splitlines()) == 1, err
    (tmp_path / "text.npz").write_bytes(b"not a zip")
    with pytest.raises(SystemExit):
        main(["infer", str(runs["mlp"]), "--data", str(tmp_path / "text.npz"), "--out", str(tmp_path / "o")])
    assert "not a readable .npz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["infer", str(runs["mlp"]), "--out", str(tmp_path / "o"), "--generate"])
    assert "only the gpt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["infer", str(tmp_path), "--out", str(tmp_path / "o"), "--data", str(runs["digits"])])
    assert "neither a run directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_existing_output_needs_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(SystemExit):
        main(["infer", str(runs["mlp"]), "--data", str(runs["digits"]), "--out", str(out)])
    assert "--overwrite" in capsys.readouterr().err and (out / "keep").exists()
    assert shoal("infer", str(runs["mlp"]), "--data", str(runs["digits"]), "--out", str(out), "--overwrite") == 0
    assert not (out / "keep").exists() and (out / "manifest.json").is_file()

"""Every mistake a user can make: one line on stderr naming the field or file, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shoal.cli import main

GOOD = 'name = "t"\n[data]\nname = "digits"\n[train]\nglobal_batch_size = 32\nsteps = 1\n'


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "good": GOOD,
        "bad_toml": 'name = "t\n',
        "unknown_top": "colour = 3\n" + GOOD,
        "unknown_in_section": GOOD + "epoch = 3\n",
        "wrong_type": GOOD + 'epochs = "many"\n',
        "bad_model": GOOD + '[model]\nname = "resnet9000"\n',
        "missing_module": GOOD + '[model]\nname = "no_such_pkg.models:build"\n',
        "missing_function": GOOD + '[model]\nname = "json:no_such_function"\n',
        "bad_factory_kwargs": GOOD + '[model]\nname = "torch.nn:Linear"\nkwargs = {colour = 1}\n',
        "bad_data": 'name = "t"\n[data]\nname = "imagenet"\n',
        "npz_without_path": 'name = "t"\n[data]\nname = "npz"\n',
        "npz_missing_file": 'name = "t"\n[data]\nname = "npz"\npath = "nowhere.npz"\n',
        "npz_wrong_keys": f'name = "t"\n[data]\nname = "npz"\npath = "{tmp_path / "wrong.npz"}"\n',
        "parquet_no_manifest": f'name = "t"\n[data]\nname = "parquet"\npath = "{tmp_path}"\n',
        "bad_optimizer": GOOD + '[optimizer]\nname = "adam9"\n',
        "negative_lr": GOOD + "[optimizer]\nlr = -0.1\n",
        "bad_hook": GOOD + '[comm]\nhook = "zip"\n',
        "cnn_on_vectors": 'name = "t"\n[data]\nname = "synthetic"\n[model]\nname = "cnn"\n',
        "nothing_to_train": 'name = "t"\n[data]\nname = "digits"\ndrop_last = true\nlimit_train = 10\n[train]\nglobal_batch_size = 32\n',
        "not_utf8": None,
    }
    out = {}
    for name, text in made.items():
        path = tmp_path / f"{name}.toml"
        if text is None:
            path.write_bytes(b"\xff\xfe\x00bad")
        else:
            path.write_text(text)
        out[name] = path
    np.savez(tmp_path / "wrong.npz", features=np.zeros((4, 2)), labels=np.zeros(4))
    return out


CASES = [
    # (job file, extra CLI args, words the message must contain)
    ("missing", [], ["job file", "not found"]),
    ("bad_toml", [], ["not valid TOML"]),
    ("not_utf8", [], ["UTF-8"]),
    ("unknown_top", [], ["unknown key 'colour'"]),
    ("unknown_in_section", [], ["unknown key 'train.epoch'"]),
    ("wrong_type", [], ["train.epochs", "integer"]),
    ("good", ["--nproc", "0"], ["nproc", "greater than or equal to 1"]),
    ("good", ["--nproc", "two"], ["--nproc", "integer"]),
    # 32 over 3 processes (or 3 micro-batches) is dealt unevenly, exactly; where each rank owns a fixed shard it must divide
    ("good", ["--nproc", "3", "--set", "data.partition_scope='dataset'"], ["train.global_batch_size = 32", "3 x 1"]),
    ("good", ["--set", "train.grad_accum=3", "--set", "data.partition_scope='dataset'"], ["train.global_batch_size", "1 x 3"]),
    ("good", ["--set", "train.epochs"], ["--set 'train.epochs'", "section.key=value"]),
    ("good", ["--set", "name.first=1"], ["'name' is a value"]),
    ("good", ["--set", "train.clip_grad_norm=-1"], ["train.clip_grad_norm"]),
    ("bad_model", [], ["model.name", "resnet9000"]),
    ("missing_module", [], ["model.name", "no_such_pkg.models"]),
    ("missing_function", [], ["model.name", "no_such_function"]),
    ("bad_factory_kwargs", [], ["model.kwargs"]),
    ("bad_data", [], ["data.name", "imagenet", "mnist"]),
    ("npz_without_path", [], ["data.path is required"]),
    ("npz_missing_file", [], ["data.path", "nowhere.npz", "not found"]),
    ("npz_wrong_keys", [], ["data.path", "'x'", "'y'"]),
    ("parquet_no_manifest", [], ["manifest.json"]),
    ("bad_optimizer", [], ["optimizer.name", "sgd", "adamw"]),
    ("negative_lr", [], ["optimizer.lr", "greater than 0"]),
    ("bad_hook", [], ["comm.hook", "powersgd"]),
    ("cnn_on_vectors", [], ["model.name", "cnn", "images"]),
    ("nothing_to_train", [], ["nothing to train", "drop_last"]),
]


@pytest.mark.parametrize("job,args,words", CASES, ids=[f"{c[0]}{''.join(c[1])}" for c in CASES])
def test_bad_input_exits_2_with_one_line(files, tmp_path, capsys, job, args, words):
    out = tmp_path / "run"
    path = files.get(job, tmp_path / "missing.toml")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--out", str(out), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert not out.exists(), "a failed start must write nothing"


def test_an_existing_run_directory_is_left_alone(files, tmp_path, capsys):
    out = tmp_path / "old-run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(files["good"]), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == "precious\n" and len(list(out.iterdir())) == 1


def test_the_real_command_prints_no_traceback(files, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shoal", "train", str(files["bad_model"]), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "model.name" in proc.stderr


def test_version_and_flags_read_as_a_newcomer_expects(capsys):
    """`shoal --version` names Shoal's and torch's versions; boolean options are shown as flags, not `<bool>`."""
    from shoal.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("shoal ") and "torch " in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "--overwrite " in help_text and "<bool>" not in help_text

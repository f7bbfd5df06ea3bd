"""Category: what only a built model can tell, checked by the dry run before any worker starts or any file is
written: user factories that raise or do not import, outputs that do not fit the data, layouts the model
cannot take (tensor-parallel sizes, tp_plan modules, pipeline layers, the parallelize hook, sync and compression)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from error_contract import BASE, job_file, refused
from shoal.config import load_job
from shoal.job.command import preflight

MODULES = {
    "raises": "def build(input_shape, num_classes):\n    raise RuntimeError('weights file missing')\n",
    "import_fails": "raise ImportError('needs the package frobnicate')\ndef build(): pass\n",
    "import_raises": "x = 1 / 0\ndef build(): pass\n",
    "syntax": "def build(:\n    pass\n",
    "no_params": "import torch\ndef build(input_shape, num_classes):\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.ReLU())\n",
    "not_module": "def build(input_shape, num_classes):\n    return 'a model'\n",
    "wrong_width": "import torch\ndef build(num_classes):\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, num_classes))\n",
    "few_outputs": "import torch\ndef build(input_shape):\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))\n",
    "three_d": "import torch\ndef build(num_classes):\n    return torch.nn.Sequential(torch.nn.Linear(8, num_classes))\n",
    "tuple_out": textwrap.dedent("""
        import torch
        class Two(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(64, 10)
            def forward(self, x):
                return x, self.lin(x.flatten(1))  # a tuple is scored by its first element
        def build():
            return Two()
    """),
    "needs_arg": "import torch\ndef build(num_classes, depth):\n    return torch.nn.Linear(64, num_classes)\n",
    "not_chain": textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = torch.nn.Linear(64, 32), torch.nn.Linear(32, 10)
            def forward(self, x):
                return self.b(self.a(x.flatten(1)))
        def build():
            return Net()
    """),
}

MLP2 = ["--nproc", "2", "--set", "parallel.tp=2"]
CASES = [
    # (model.name or None, extra args, words)
    ("raises:build", [], ["model.name", "raises:build", "RuntimeError: weights file missing"]),
    ("import_fails:build", [], ["model.name", "import_fails", "frobnicate"]),
    ("import_raises:build", [], ["model.name", "import_raises", "ZeroDivisionError"]),
    ("syntax:build", [], ["model.name", "syntax error", "line 1"]),
    ("no_params:build", [], ["model.name", "without parameters"]),
    ("not_module:build", [], ["model.name", "not a torch.nn.Module"]),
    ("wrong_width:build", [], ["model.name", "wrong_width:build", "(1, 8, 8)", "mat1 and mat2"]),
    ("few_outputs:build", [], ["model.name", "output shaped (4, 3)", "labels go up to 9"]),
    ("three_d:build", [], ["model.name", "output shaped (4, 1, 8, 10)"]),
    ("tuple_out:build", [], ["model.name", "output shaped (4, 1, 8, 8)"]),
    ("needs_arg:build", [], ["model.kwargs", "depth"]),
    ("not_chain:build", ["--nproc", "2", "--set", "parallel.pp=2"], ["parallel.pp = 2", "not a chain of layers"]),
    ("gpt", [], ["model.name", "gpt"]),  # a language model on images
    ("mlp", ["--set", "model.hidden=[16777216, 16777216]"], ["model: mlp", "parameters", "GiB", "parallel.fsdp"]),
    ("mlp", [*MLP2, "--set", "model.hidden=[33]"], ["parallel.tp = 2", "'1'", "33 outputs"]),
    ("mlp", [*MLP2, "--set", 'parallel.tp_plan={"nope" = "colwise"}'], ["parallel.tp_plan", "'nope'"]),
    ("mlp", [*MLP2, "--set", "model.hidden=[]"], ["parallel.tp = 2", "fewer than two Linear layers"]),
    ("mlp", ["--nproc", "4", "--set", "parallel.pp=4", "--set", "model.hidden=[16]"], ["parallel.pp", "layers with weights"]),
    ("mlp", ["--nproc", "2", "--set", "parallel.pp=2", "--set", "model.hidden=[]"], ["parallel.pp", "layers with weights"]),
    ("mlp", ["--nproc", "2", "--set", "parallel.pp=2", "--set", 'parallel.pp_split=["nope"]'], ["parallel.pp_split", "'nope'"]),
    ("mlp", ["--nproc", "4", "--set", "parallel.pp=2", "--set", "parallel.pp_schedule=\"interleaved\"", "--set", "model.hidden=[16]"],
     ["parallel.pp", "4 stages"]),
    ("mlp", ["--set", 'parallel.parallelize="no_such_hooks:apply"'], ["parallel.parallelize", "no_such_hooks"]),
    ("mlp", ["--set", 'parallel.parallelize="nocolon"'], ["parallel.parallelize", "package.module:function"]),
    ("mlp", ["--set", 'parallel.parallelize="raises:nothing_here"'], ["parallel.parallelize", "no function 'nothing_here'"]),
    ("mlp", ["--nproc", "2", "--set", "parallel.fsdp=2", "--set", 'comm.compression="topk"'], ["comm.compression = 'topk'", "fsdp"]),
    ("mlp", ["--nproc", "2", "--set", "parallel.tp=2", "--set", 'comm.hook="powersgd"'], ["comm.compression = 'powersgd'"]),
]
GPT = ('name = "g"\n[model]\nname = "gpt"\ndim = 96\nheads = 3\nlayers = 2\n'
       '[data]\nname = "shakespeare"\nseq_len = 16\n[train]\nglobal_batch_size = 8\nsteps = 1\n')


@pytest.fixture
def modules(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the directory must stay as it was: no __pycache__
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, text in MODULES.items():
        (tmp_path / f"{name}.py").write_text(text)
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("model,args,words", CASES, ids=[f"{c[0]}{' '.join(c[1][-1:])}" for c in CASES])
def test_dry_run_refuses_before_any_worker(modules, capsys, model, args, words):
    job = job_file(modules, BASE + f'[model]\nname = "{model}"\n')
    refused(["train", str(job), "--out", str(modules / "run"), *args], words, modules, capsys)


def test_gpt_heads_that_tensor_parallel_cannot_split(tmp_path, capsys):
    job = job_file(tmp_path, GPT)
    refused(["train", str(job), "--out", str(tmp_path / "run"), "--nproc", "2", "--set", "parallel.tp=2"], ["parallel.tp"], tmp_path, capsys)


def test_factory_that_needs_real_tensors_passes(tmp_path, monkeypatch):
    """A factory the meta device cannot build (it reads a value) is built for real, and passes."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "real_only.py").write_text(textwrap.dedent("""
        import torch
        def build(num_classes):
            width = int(torch.ones(1).sum().item()) * 16
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.Linear(width, num_classes))
    """))
    try:
        preflight(load_job(job_file(tmp_path, BASE + '[model]\nname = "real_only:build"\n')))
    finally:
        sys.modules.pop("real_only", None)


@pytest.mark.parametrize("overrides", [[], ["parallel.tp=2", "nproc=2"], ["parallel.pp=2", "nproc=2"], ["parallel.fsdp=2", "parallel.tp=2", "nproc=4"]])
def test_good_gpt_layouts_pass_the_dry_run(overrides):
    preflight(load_job("examples/gpt_shakespeare.toml", overrides))


@pytest.mark.parametrize("target", ["k8s", "slurm"])
def test_deploy_runs_the_dry_run_too(modules, capsys, target):
    """A job that deploys is a job that trains: no cluster is asked for nodes for a model that cannot run."""
    job = job_file(modules, BASE + '[model]\nname = "few_outputs:build"\n')
    refused(["deploy", target, str(job), "--out", str(modules / "job.out")], ["model.name", "output shaped"], modules, capsys)

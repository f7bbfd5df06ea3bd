"""`shoal deploy`: the Kubernetes manifest loads into the official client models (kubernetes and
kubeflow-training), with unknown keys and missing required fields failing; the SLURM script
passes `bash -n` and uses only real sbatch options."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from shoal.cli import main

kubernetes = pytest.importorskip("kubernetes")
training = pytest.importorskip("kubeflow.training")

JOB = 'name = "Deploy_Test"\nnproc = 2\n[data]\nname = "digits"\n[train]\nglobal_batch_size = 48\nsteps = 3\n'
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
# sbatch's long options (slurm 23.x man page), enough to catch a misspelt directive
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks", "ntasks-per-node", "cpus-per-task", "output", "error", "time", "partition",
                  "account", "gres", "gpus-per-node", "mem", "mem-per-cpu", "exclusive", "qos", "constraint", "array",
                  "mail-type", "mail-user", "chdir", "signal", "requeue", "no-requeue", "dependency", "reservation"}


def model_class(name: str):
    for module in (training.models, kubernetes.client):
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"no client model named {name}")


def build(type_name: str, data, where: str = "$"):
    """Construct the client model `type_name` from a plain dict, as strictly as the API server would read it."""
    if type_name.startswith("list["):
        assert isinstance(data, list), f"{where}: expected a list"
        return [build(type_name[5:-1], x, f"{where}[{i}]") for i, x in enumerate(data)]
    if type_name.startswith("dict("):
        value_type = type_name[5:-1].split(",", 1)[1].strip()
        return {k: build(value_type, v, f"{where}.{k}") for k, v in data.items()}
    if type_name in PRIMITIVES:
        assert isinstance(data, PRIMITIVES[type_name]), f"{where}: expected {type_name}, got {data!r}"
        return data
    cls = model_class(type_name)
    assert isinstance(data, dict), f"{where}: expected an object {type_name}"
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    unknown = set(data) - set(by_key)
    assert not unknown, f"{where}: keys {sorted(unknown)} are not fields of {type_name}"
    kwargs = {by_key[k]: build(cls.openapi_types[by_key[k]], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)  # client-side validation raises ValueError on a missing required field


def deploy(tmp_path: Path, *args: str) -> str:
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    out = tmp_path / "out.file"
    with pytest.raises(SystemExit) as done:
        main(["deploy", *args[:1], str(job), *args[1:], "--out", str(out)])
    assert done.value.code == 0
    return out.read_text()


@pytest.mark.parametrize("nnodes", ["3", "2:4"])
def test_kubernetes_manifest_is_a_valid_pytorchjob(tmp_path, nnodes):
    config_map, job = yaml.safe_load_all(deploy(tmp_path, "k8s", "--nnodes", nnodes, "--image", "reg.example/shoal:1"))
    build("V1ConfigMap", config_map)
    assert "global_batch_size = 48" in config_map["data"]["job.toml"]
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    built = build("KubeflowOrgV1PyTorchJob", job)
    assert built.metadata.name == "deploy-test"  # a DNS-1123 name
    replicas = built.spec.pytorch_replica_specs
    container = next(iter(replicas.values())).template.spec.containers[0]
    assert container.name == "pytorch" and container.command[:4] == ["torchrun", "-m", "shoal", "train"]
    assert built.spec.nproc_per_node == "2"
    if ":" in nnodes:
        assert set(replicas) == {"Worker"} and replicas["Worker"].replicas == 4
        assert (built.spec.elastic_policy.min_replicas, built.spec.elastic_policy.max_replicas) == (2, 4)
    else:
        assert replicas["Master"].replicas == 1 and replicas["Worker"].replicas == 2


def test_the_validator_rejects_unknown_keys_and_missing_fields():
    with pytest.raises(AssertionError, match="colour"):
        build("V1Container", {"name": "pytorch", "colour": "red"})
    with pytest.raises(ValueError, match="containers"):
        build("V1PodSpec", {"volumes": []})


def test_slurm_script_is_valid_bash_with_known_sbatch_options(tmp_path):
    script = deploy(tmp_path, "slurm", "--nnodes", "2:4", "--nproc-per-node", "1")
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, timeout=10).returncode == 0
    assert script.startswith("#!/bin/bash\n")
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)$", script, re.M))
    assert directives and set(directives) <= SBATCH_OPTIONS
    assert directives["nodes"] == "2-4"
    assert all(line.startswith("#SBATCH --") for line in script.splitlines() if line.startswith("#SBATCH"))
    assert 'srun torchrun --nnodes "2:$SLURM_NNODES"' in script and '--rdzv-endpoint "$head:29400"' in script


@pytest.mark.parametrize("args, message", [
    (["k9"], "deploy target 'k9': choose k8s or slurm"),
    (["k8s", "--nnodes", "x"], "--nnodes 'x'"),
    (["k8s", "--nnodes", "5", "--set", "data.partition_scope='dataset'"], "train.global_batch_size = 48 must be divisible"),
    (["k8s", "--nnodes", "2:5", "--set", "data.partition_scope='dataset'"], "(4, 6, 8, 10 processes); pick a multiple of 120"),
    (["slurm", "--nproc-per-node", "0"], "--nproc-per-node 0"),
])
def test_deploy_errors_are_one_line(tmp_path, capsys, args, message):
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    with pytest.raises(SystemExit) as done:
        main(["deploy", args[0], str(job), *args[1:], "--out", str(tmp_path / "x")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_deploy_takes_set_like_train_and_passes_it_on(tmp_path, capsys):
    """`--set` is checked here (a bad key fails before any file is written) and travels to `shoal train`."""
    script = deploy(tmp_path, "slurm", "--nproc-per-node", "1", "--set", "train.steps=7", "--set", 'name="two words"')
    assert "--set train.steps=7" in script and "--set 'name=\"two words\"'" in script
    manifest = list(yaml.safe_load_all(deploy(tmp_path, "k8s", "--set", "train.steps=7")))
    command = manifest[1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--set", "train.steps=7"]
    with pytest.raises(SystemExit) as done:
        main(["deploy", "k8s", str(tmp_path / "job.toml"), "--set", "train.nope=1", "--out", str(tmp_path / "bad.yaml")])
    assert done.value.code == 2 and "train.nope" in capsys.readouterr().err
    assert not (tmp_path / "bad.yaml").exists()

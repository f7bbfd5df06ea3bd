"""`shoal deploy k8s|slurm JOB.toml`: the files a cluster needs to run the same job under torchrun.

- k8s: a ConfigMap holding the job file and a Kubeflow PyTorchJob (kubeflow.org/v1). The
  training operator sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT
  (and the rendezvous settings of an elastic job) in every pod; torchrun reads them.
- slurm: an sbatch script; srun starts one torchrun per node, meeting at a c10d rendezvous on
  the first node of the allocation.
"""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from shoal.config import JobConfig
from shoal.errors import ShoalError, check_output_file
from shoal.launch.nodes import parse_nnodes
from shoal.run_dir import atomic_write_bytes

JOB_MOUNT = "/etc/shoal"
RUNS_MOUNT = "/runs"
RDZV_PORT = 29400


@dataclass(frozen=True)
class Deployment:
    job_path: Path
    job_text: str
    cfg: JobConfig
    min_nodes: int
    max_nodes: int
    nproc_per_node: int
    image: str
    max_restarts: int
    overrides: tuple[str, ...] = ()  # --set of `shoal deploy`: passed on to `shoal train` on the cluster

    @property
    def name(self) -> str:
        """The job name as a DNS-1123 label, which Kubernetes requires of object names."""
        label = re.sub(r"[^a-z0-9-]+", "-", self.cfg.name.lower()).strip("-")[:50]
        return label or "shoal-job"

    @property
    def elastic(self) -> bool:
        return self.min_nodes != self.max_nodes


def deployment(job: Path, cfg: JobConfig, nnodes: str, nproc_per_node: int | None, image: str, max_restarts: int,
               overrides: tuple[str, ...] = ()) -> Deployment:
    lo, hi = parse_nnodes(nnodes)
    nproc = nproc_per_node if nproc_per_node is not None else cfg.nproc
    if nproc < 1:
        raise ShoalError(f"--nproc-per-node {nproc}: must be 1 or more")
    if max_restarts < 0:
        raise ShoalError(f"--max-restarts {max_restarts}: must be 0 or more")
    if not image.strip():
        raise ShoalError("--image: give the container image that has shoal installed, e.g. --image registry/shoal:0.1")
    return Deployment(job, job.read_text(), cfg, lo, hi, nproc, image.strip(), max_restarts, tuple(overrides))


def check_world_sizes(d: Deployment) -> None:
    """The batch must split over every world size the job may run at, before a cluster is asked for nodes."""
    from shoal.data import describe
    from shoal.distributed.mesh import check_layout
    from shoal.job.checks import check_node_counts, check_parts
    from shoal.job.dryrun import dry_run

    check_parts(d.cfg)
    spec = describe(d.cfg.data, d.cfg.seed)
    check_node_counts(d.cfg, spec.n_train, d.nproc_per_node, d.min_nodes, d.max_nodes)
    dry_run(d.cfg, spec, check_layout(d.cfg.parallel, d.nproc_per_node * d.min_nodes), memory=False)  # the cluster's memory is not this machine's


def _train_args(job_file: str, out: str, overrides: tuple[str, ...] = (), quote=str) -> list[str]:
    return ["-m", "shoal", "train", job_file, "--out", out, *[a for o in overrides for a in ("--set", quote(o))]]


def kubernetes_manifest(d: Deployment) -> str:
    """Two YAML documents: the job file as a ConfigMap, and the PyTorchJob that mounts it."""
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{d.name}-job"},
                  "data": {"job.toml": d.job_text}}
    command = ["torchrun", *_train_args(f"{JOB_MOUNT}/job.toml", f"{RUNS_MOUNT}/{d.name}", d.overrides)]
    pod = {"spec": {
        "containers": [{
            "name": "pytorch",  # the operator finds the training container by this name
            "image": d.image,
            "command": command,
            "env": [{"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"}],  # pytorch#135712: restarts
            "volumeMounts": [{"name": "job", "mountPath": JOB_MOUNT, "readOnly": True}, {"name": "runs", "mountPath": RUNS_MOUNT}],
        }],
        "volumes": [{"name": "job", "configMap": {"name": f"{d.name}-job"}},
                    {"name": "runs", "emptyDir": {}}],  # replace by a PersistentVolumeClaim to keep the run directory
    }}
    replica = lambda count: {"replicas": count, "restartPolicy": "OnFailure", "template": copy.deepcopy(pod)}  # noqa: E731
    spec: dict = {"nprocPerNode": str(d.nproc_per_node), "runPolicy": {"cleanPodPolicy": "None"}}  # keep pods for their logs
    if d.elastic:  # elastic jobs are all workers; membership comes from the c10d rendezvous
        spec["elasticPolicy"] = {"rdzvBackend": "c10d", "minReplicas": d.min_nodes, "maxReplicas": d.max_nodes,
                                 "maxRestarts": d.max_restarts}
        spec["pytorchReplicaSpecs"] = {"Worker": replica(d.max_nodes)}
    else:
        spec["runPolicy"]["backoffLimit"] = d.max_restarts
        spec["pytorchReplicaSpecs"] = {"Master": replica(1)}
        if d.max_nodes > 1:
            spec["pytorchReplicaSpecs"]["Worker"] = replica(d.max_nodes - 1)
    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": d.name}, "spec": spec}
    header = f"# shoal deploy k8s {d.job_path.name}: {d.min_nodes}:{d.max_nodes} nodes x {d.nproc_per_node} processes\n"
    return header + yaml.dump_all([config_map, job], Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the job file) as readable `|` blocks."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def slurm_script(d: Deployment) -> str:
    """An sbatch script: one torchrun per node (srun), c10d rendezvous on the allocation's first node."""
    nodes = str(d.max_nodes) if not d.elastic else f"{d.min_nodes}-{d.max_nodes}"
    job_file = shlex.quote(str(d.job_path.resolve()))  # the cluster's shared file system must hold it
    # elastic: go on with MIN..allocated nodes when one fails; a round waits 5 s for late nodes instead of 30
    nnodes = [f'"{d.min_nodes}:$SLURM_NNODES"', "--rdzv-conf", "last_call_timeout=5"] if d.elastic else ['"$SLURM_NNODES"']
    torchrun = ["torchrun", "--nnodes", *nnodes, "--nproc-per-node", str(d.nproc_per_node),
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f'"$head:{RDZV_PORT}"', "--rdzv-id", '"$SLURM_JOB_ID"',
                "--max-restarts", str(d.max_restarts), *_train_args(job_file, f'"runs/{d.name}-$SLURM_JOB_ID"', d.overrides, shlex.quote)]
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={d.name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={d.nproc_per_node}",
        f"#SBATCH --output={d.name}-%j.out",
        "set -euo pipefail",
        "# every node reaches the rendezvous on the first node of the allocation",
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1  # pytorch#135712: stale store addresses after a restart",
        "srun " + " ".join(torchrun),
        "",
    ])


RENDERERS = {"k8s": (kubernetes_manifest, ".yaml"), "slurm": (slurm_script, ".sbatch")}


def deploy(target: str, job: Path, cfg: JobConfig, nnodes: str = "2", nproc_per_node: int | None = None,
           image: str = "shoal:latest", max_restarts: int = 3, out: Path | None = None, overrides: tuple[str, ...] = ()) -> Path:
    """Render the files for `target` and write them to `out` (default: NAME.yaml or NAME.sbatch here)."""
    if target not in RENDERERS:
        raise ShoalError(f"deploy target '{target}': choose k8s or slurm")
    render, suffix = RENDERERS[target]
    d = deployment(job, cfg, nnodes, nproc_per_node, image, max_restarts, overrides)
    check_world_sizes(d)
    target = out or Path(f"{d.name}{suffix}")
    check_output_file(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, render(d).encode())
    return target

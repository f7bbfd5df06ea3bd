"""`shoal plan`: a job file (or shapes given directly) on a cluster preset or profile -> a table and a recommendation."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from shoal.config import JobConfig, load_job
from shoal.errors import ShoalError
from shoal.plan.cost import Sync
from shoal.plan.hardware import load_cluster
from shoal.plan.search import GB, Plan, make_plan
from shoal.plan.shapes import ModelShape, with_overrides


def shape_of_job(cfg: JobConfig) -> ModelShape:
    """The transformer a job trains: Shoal's GPT (model.name = gpt) with its sequence length, vocabulary and batch."""
    m = cfg.model
    if m.name != "gpt":
        raise ShoalError(f"plan: model.name = '{m.name}': the planner sizes transformers; use model.name = 'gpt' or give the "
                         "shape with --model layers=..,dim=..,heads=..,seq=..,vocab=..,batch=..")
    vocab = 0
    if cfg.data.name == "shakespeare":
        from shoal.data.text import sizes

        vocab = sizes(cfg.data.seq_len, cfg.data.eval_fraction)[2]
    return ModelShape(m.layers, m.dim, m.heads, cfg.data.seq_len, vocab or 256, cfg.train.global_batch_size, ffn=m.mlp_ratio * m.dim,
                      tied=m.tie_head)


def sync_of_job(cfg: JobConfig | None) -> Sync:
    if cfg is None:
        return Sync()
    if cfg.sync == "param_server":
        return Sync("param_server", servers=cfg.ps.servers)
    if cfg.sync == "average":
        return Sync("average", every=cfg.average.every)
    return Sync()


def plan_for(job: Path | None, overrides: list[str], model: str, cluster: str, nodes: int, per_node: int) -> Plan:
    cfg = load_job(job, overrides) if job is not None else None
    shape = with_overrides(shape_of_job(cfg) if cfg is not None else None, model)
    return make_plan(shape, load_cluster(cluster, nodes, per_node), cfg.optimizer.name if cfg else "adamw", sync_of_job(cfg))


def lines(plan: Plan, top: int) -> list[str]:
    s = plan.shape
    out = [f"model: {s.params() / 1e9:.3g}B parameters, {s.layers} layers, dim {s.dim}, {s.heads} heads, seq {s.seq}, vocab {s.vocab}, "
           f"global batch {s.batch} sequences; {s.train_flops_per_token() / 1e9:.3g} GFLOP per token (training)",
           f"cluster: {plan.cluster.describe()} ({plan.cluster.world} devices)", "",
           f"{'layout':44} {'step s':>10} {'tokens/s':>12} {'MFU':>6} {'GB/device':>10}  fits"]
    dropped = [p for p in plan.predictions if not p.fits]
    for p in plan.fitting[:top] + dropped[:min(3, len(dropped))]:
        out.append(f"{p.layout.describe():44} {p.step_s:10.4g} {p.tokens_per_s:12,.0f} {p.mfu:6.1%} {p.memory_bytes / GB:10.2f}  "
                   f"{'yes' if p.fits else 'no (dropped)'}")
    out += ["", f"recommended: {plan.best.layout.describe()}"] + [f"  - {r}" for r in plan.reasons]
    return out


def write_json(plan: Plan, path: Path) -> None:
    rows = [{"layout": asdict(p.layout), "describe": p.layout.describe(), "step_s": p.step_s, "memory_bytes": p.memory_bytes,
             "fits": p.fits, "time": p.time, "memory": p.memory, "tokens_per_s": p.tokens_per_s, "mfu": p.mfu} for p in plan.predictions]
    data = {"shape": asdict(plan.shape), "cluster": plan.cluster.describe(), "recommended": plan.best.layout.describe(),
            "reasons": plan.reasons, "layouts": rows}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def plan_command(job: Path | None, overrides: list[str], model: str, cluster: str, nodes: int, per_node: int, top: int,
                 json_out: Path | None) -> list[str]:
    plan = plan_for(job, overrides, model, cluster, nodes, per_node)
    if json_out is not None:
        write_json(plan, json_out)
    return lines(plan, top)

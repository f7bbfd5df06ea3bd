"""Module-level functions the transformers tests run inside spawned workers (spawn pickles them by name).

Tiny GPT-2 and BERT models built from their config classes (no download), trained through `shoal.fit`
exactly as transformers returns them (ModelOutput, dict batches with attention masks), and through job
files (`model.name = "hf:..."`, npz of named arrays). One launch trains every case of a world size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import shoal
from shoal.config import deep_merge as merged
from shoal.distributed import init_distributed
from shoal.job.worker import run_job

VOCAB, SEQ, N = 64, 8, 48
GPT2 = {"n_layer": 2, "n_embd": 16, "n_head": 4, "n_positions": SEQ}
LLAMA = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": SEQ}
BERT = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": SEQ}
COMMON = {"seed": 7, "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
          "train": {"global_batch_size": 8, "steps": 3, "log_every": 1, "clip_grad_norm": 1.0, "threads": 1},
          "checkpoint": {"at_end": False}, "log": {"monitors": []}}
UNTIED = {"model": {"kwargs": {**GPT2, "tie_word_embeddings": False}}}  # tied embeddings cannot span pipeline stages


def token_data(seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids with right padding on every third row (attention mask 0 there), and a class label per row."""
    g = np.random.default_rng(seed)
    ids = g.integers(1, VOCAB, size=(N, SEQ))
    mask = np.ones_like(ids)
    mask[::3, SEQ - 3 :] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": (ids[:, 1] % 3).astype(np.int64)}


def write_npz(path: str, task: str, token_types: bool = False) -> None:
    """token_types: BERT's sentence pairs, the second segment (token_type_ids 1) from a row's middle on."""
    d = token_data()
    arrays = {"input_ids": d["input_ids"], "attention_mask": d["attention_mask"]}
    if task == "classify":
        arrays["labels"] = d["labels"]
    if token_types:
        arrays["token_type_ids"] = (np.arange(SEQ)[None] >= SEQ // 2 + np.arange(N)[:, None] % 2) * d["attention_mask"]
    np.savez(path, **arrays)


def write_parquet(path: str, task: str) -> None:
    """The npz's arrays as Parquet list columns (one row a sample), which each rank reads per rank."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = token_data()
    cols = {"input_ids": d["input_ids"].tolist(), "attention_mask": d["attention_mask"].tolist()}
    if task == "classify":
        cols["labels"] = d["labels"].tolist()
    pq.write_table(pa.table(cols), path, row_group_size=8)


def hf_model(kind: str):
    import transformers

    torch.manual_seed(11)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, **GPT2)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3, **BERT)
    return transformers.BertForSequenceClassification(cfg)


def job_model(kind: str):
    """A fresh model as the job route builds it (hf: name, the data's vocabulary and length), for loading model.pt."""
    from shoal.models import build_model

    cfg = job(kind, "tokens.npz", {})
    return build_model(cfg.model, (SEQ,), VOCAB if kind != "bert" else 3, cfg.seed)


def samples(kind: str) -> list[dict]:
    """datasets-style rows: one dict of tensors per sample (labels only for the classifier)."""
    d = {k: torch.as_tensor(v) for k, v in token_data().items()}
    keys = ["input_ids", "attention_mask"] + (["labels"] if kind == "bert" else [])
    return [{k: d[k][i] for k in keys} for i in range(N)]


def job(kind: str, npz: str, overrides: dict) -> shoal.JobConfig:
    model = {"gpt2": {"name": "hf:gpt2", "kwargs": GPT2}, "llama": {"name": "hf:llama", "kwargs": LLAMA},
             "bert": {"name": "hf:bert", "kwargs": {**BERT, "num_labels": 3}}}[kind]
    data = {"name": "parquet" if npz.endswith(".parquet") else "npz", "path": npz, "eval_fraction": 0.25}
    return shoal.JobConfig.model_validate(merged(COMMON, {"model": model, "data": data}, overrides))


def read_run(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"losses": [r["loss"] for r in records if r["kind"] == "train"], "eval": [r for r in records if r["kind"] == "eval"][-1],
            "params": torch.load(out / "model.pt"), "data": [r for r in records if r["kind"] == "data"]}


def run_cases(root: str, cases: list[tuple[str, str, str, dict]]) -> dict | None:
    """Each (route, model, name, overrides): route "fit" (shoal.fit on the model as transformers builds it) or "job"."""
    init_distributed("auto", 300.0)  # the job route's barrier needs the group fit would make
    results = {}
    for route, kind, name, overrides in cases:
        out = Path(root) / f"{route}-{kind}-{name}"
        if route == "fit":
            rows = samples(kind)
            cfg = merged(COMMON, {"data": {"task": "lm" if kind == "gpt2" else "classify"}}, overrides)
            shoal.fit(hf_model(kind), rows[:36], rows[36:], cfg, out=str(out), overwrite=True, show_progress=False, summary=False)
        else:
            # pq: Parquet list columns, read per rank; tt: the npz with token_type_ids
            npz = str(Path(root) / {"pq": f"{kind}.parquet", "tt": f"{kind}-tt.npz"}.get(route, f"{kind}.npz"))
            if torch.distributed.get_rank() == 0 and not Path(npz).exists():
                task = "classify" if kind == "bert" else "lm"
                if route == "pq":
                    write_parquet(npz, task)
                else:
                    write_npz(npz, task, token_types=route == "tt")
            torch.distributed.barrier()
            overrides = dict(overrides)
            resume_of = overrides.pop("resume_of", None)  # continue that case's run (its checkpoint) under this layout
            if resume_of:
                out = Path(root) / f"{route}-{kind}-{resume_of}"
            run_job(job(kind, npz, overrides), str(out), overwrite=not resume_of, resume=bool(resume_of))
        if torch.distributed.get_rank() == 0:
            results[(route, kind, name)] = read_run(out)
    return results if torch.distributed.get_rank() == 0 else None


class TwoBranches(torch.nn.Module):
    """Two Linear layers side by side (not in a chain): pairing them colwise -> rowwise is wrong, and must be refused."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = torch.nn.Linear(6, 8), torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.a(x) + self.b(x)))


def refused_plan(root: str) -> str | None:
    """An automatic plan that does not reproduce the model: the one line every rank raises."""
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    try:
        shoal.fit(TwoBranches(), torch.utils.data.TensorDataset(x, y), None, {"parallel": {"tp": 2}, "train": {"global_batch_size": 8, "steps": 1}},
                  show_progress=False, summary=False)
    except shoal.ShoalError as err:
        return str(err)
    return None


def refused_tied_pipeline(root: str) -> str | None:
    """GPT-2's tied lm_head and wte would land in two stages: the one line, with the transformers-side fix."""
    npz = str(Path(root) / "gpt2.npz")
    try:
        run_job(job("gpt2", npz, {"parallel": {"pp": 2}}), str(Path(root) / "tied-pp"), overwrite=True)
    except shoal.ShoalError as err:
        return str(err)
    return None


def gpt2_tp_shards() -> dict:
    """GPT-2 under tp = world: each parameter's local shape on this rank, and its whole shape."""
    from torch.distributed.device_mesh import init_device_mesh

    from shoal.parallel import hf_plans

    model = hf_model("gpt2")
    whole = {n: tuple(p.shape) for n, p in model.named_parameters()}
    hf_plans.apply_gpt2(model, init_device_mesh("cpu", (torch.distributed.get_world_size(),)))
    local = {n: tuple(p.to_local().shape if hasattr(p, "to_local") else p.shape) for n, p in model.named_parameters()}
    return {"whole": whole, "local": local}


def run_all(root: str, cases: list, refuse: bool = False) -> dict | None:
    results = run_cases(root, cases)
    messages = {"refused": refused_plan(root), "tied": refused_tied_pipeline(root), "shards": gpt2_tp_shards()} if refuse else {}
    if results is not None:
        results.update(messages)
    return results

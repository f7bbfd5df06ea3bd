"""Tensor-parallel plans for transformers models: GPT-2, BERT, Llama (Megatron's split of each block).

- BERT, Llama: `query`/`key`/`value` (`q_proj`/`k_proj`/`v_proj`) and the MLP's first layers are
  column-parallel, the attention output and the MLP's last layer row-parallel: each rank computes its
  share of the heads and of the MLP, and one all-reduce closes each half of a block. Embeddings, norms and
  the head stay whole (replicated), so tied embeddings need nothing.
- GPT-2 keeps its weights in `Conv1D` layers (weight shaped (in, out)): `c_fc` is column-parallel, both
  `c_proj` row-parallel (DTensors, gathered whole for model.pt, resharded by checkpoints), and the forward runs
  on the local shards with Megatron's two collectives (identity forward / all-reduce backward on entry,
  all-reduce forward / identity backward on exit). The fused query/key/value `c_attn` is column-parallel too,
  in its own layout (each rank a contiguous 1/tp of q|k|v, so model.pt, checkpoints and their resharding see
  transformers' tensor): one all-to-all of its output gives each rank its heads' query, key and value columns,
  and the reverse one in backward. (Holding the heads' columns themselves would need a strided placement that
  torch's checkpoints cannot save.)

Any automatic plan (these, or the pairing of Linear layers) is checked on one batch against the unsharded
model before training; a mismatch is refused with one line.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from shoal.errors import ShoalError
from shoal.parallel.layers import block_list

FAMILIES = ("gpt2", "bert", "llama")


def family(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    return kind if kind in FAMILIES else None


def _divisible(what: dict[str, int], tp: int, kind: str) -> None:
    for name, value in what.items():
        if value % tp:
            raise ShoalError(f"parallel.tp = {tp}: the {kind} model's {name} = {value} is not divisible by {tp}")


def linear_plan(model: nn.Module, tp: int) -> dict[str, str]:
    """BERT and Llama: module path -> colwise/rowwise for every block."""
    kind, c = family(model), model.config
    blocks = block_list(model)
    if blocks is None:
        raise ShoalError(f"parallel.tp: found no block list in the {kind} model")
    n = len(model.get_submodule(blocks))
    if kind == "bert":
        _divisible({"num_attention_heads": c.num_attention_heads, "intermediate_size": c.intermediate_size}, tp, kind)
        per = {"attention.self.query": "colwise", "attention.self.key": "colwise", "attention.self.value": "colwise",
               "attention.output.dense": "rowwise", "intermediate.dense": "colwise", "output.dense": "rowwise"}
    else:
        kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        _divisible({"num_attention_heads": c.num_attention_heads, "num_key_value_heads": kv, "intermediate_size": c.intermediate_size}, tp, kind)
        per = {"self_attn.q_proj": "colwise", "self_attn.k_proj": "colwise", "self_attn.v_proj": "colwise", "self_attn.o_proj": "rowwise",
               "mlp.gate_proj": "colwise", "mlp.up_proj": "colwise", "mlp.down_proj": "rowwise"}
    return {f"{blocks}.{i}.{leaf}": style for i in range(n) for leaf, style in per.items()}


def styles(plan: dict[str, str]) -> dict:
    return {name: ColwiseParallel() if style == "colwise" else RowwiseParallel() for name, style in plan.items()}


# --- GPT-2: Conv1D by hand ------------------------------------------------------------------------


class _EnterTP(torch.autograd.Function):
    """Identity forward; the input's gradient summed over the tensor-parallel group in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _LeaveTP(torch.autograd.Function):
    """Partial outputs summed over the tensor-parallel group in forward; identity backward."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _colwise_forward(module, group, x):
    w, b = module.weight.to_local(), module.bias.to_local()
    x = _EnterTP.apply(x, group)
    out = torch.addmm(b, x.reshape(-1, x.shape[-1]), w)
    return out.view(*x.shape[:-1], w.shape[1])


def _rowwise_forward(module, group, x):
    w, b = module.weight.to_local(), module.bias.to_local()
    out = _LeaveTP.apply(torch.mm(x.reshape(-1, x.shape[-1]), w), group) + b
    return out.view(*x.shape[:-1], w.shape[1])


class _MyHeads(torch.autograd.Function):
    """c_attn's output columns from this rank's contiguous block (chunks 3r, 3r+1, 3r+2 of width E/tp in q|k|v order)
    to this rank's heads (chunks r, tp+r, 2tp+r: its query, key and value) by one all-to-all; backward the reverse."""

    @staticmethod
    def forward(ctx, block, group, rank, tp):
        order = sorted(range(3), key=lambda j: (3 * rank + j) % tp)  # my chunks by the rank that takes them
        sends = [sum((3 * rank + j) % tp == s for j in range(3)) for s in range(tp)]
        takes = [sum(c // 3 == s for c in (rank, tp + rank, 2 * tp + rank)) for s in range(tp)]
        ctx.group, ctx.order, ctx.sends, ctx.takes = group, order, sends, takes
        lead, width = block.shape[:-1], block.shape[-1] // 3
        out = _exchange(block.reshape(-1, 3, width)[:, order], takes, sends, group)  # (n, 3, width): my q, k, v
        return out.reshape(*lead, 3 * width)

    @staticmethod
    def backward(ctx, grad):
        lead, width = grad.shape[:-1], grad.shape[-1] // 3
        back = _exchange(grad.reshape(-1, 3, width), ctx.sends, ctx.takes, ctx.group)  # my block's chunks, in `order`
        full = torch.empty_like(back)
        full[:, ctx.order] = back
        return full.reshape(*lead, 3 * width), None, None, None


def _exchange(chunks: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    """All-to-all of (n, k, width) chunk columns along k: in_splits[s] chunks go to rank s, out_splits[s] come from it."""
    send = chunks.permute(1, 0, 2).contiguous()
    recv = torch.empty((sum(out_splits), *send.shape[1:]), dtype=send.dtype, device=send.device)
    dist.all_to_all_single(recv, send, out_splits, in_splits, group=group)
    return recv.permute(1, 0, 2)


def _qkv_forward(rank, tp, module, group, x):
    return _MyHeads.apply(_colwise_forward(module, group, x), group, rank, tp)


def _shard_conv1d(module: nn.Module, mesh: DeviceMesh, weight_placement, bias_placement, forward) -> None:
    module.weight = nn.Parameter(distribute_tensor(module.weight.data, mesh, [weight_placement]))
    module.bias = nn.Parameter(distribute_tensor(module.bias.data, mesh, [bias_placement]))
    module.forward = functools.partial(forward, module, mesh.get_group())


def apply_gpt2(model: nn.Module, mesh: DeviceMesh) -> None:
    tp, c = mesh.size(), model.config
    inner = c.n_inner or 4 * c.n_embd
    _divisible({"n_head": c.n_head, "n_embd": c.n_embd, "n_inner": inner}, tp, "gpt2")
    if getattr(c, "add_cross_attention", False):
        raise ShoalError("parallel.tp: GPT-2 with cross-attention has no built-in tensor-parallel plan; give parallel.parallelize")
    blocks = block_list(model)
    for i in range(len(model.get_submodule(blocks))):
        block = model.get_submodule(f"{blocks}.{i}")
        attn, mlp = block.attn, block.mlp
        _shard_conv1d(attn.c_attn, mesh, Shard(1), Shard(0), functools.partial(_qkv_forward, mesh.get_local_rank(), tp))
        attn.split_size = attn.split_size // tp  # this rank's query, key and value columns: its heads
        _shard_conv1d(attn.c_proj, mesh, Shard(0), Replicate(), _rowwise_forward)
        _shard_conv1d(mlp.c_fc, mesh, Shard(1), Shard(0), _colwise_forward)
        _shard_conv1d(mlp.c_proj, mesh, Shard(0), Replicate(), _rowwise_forward)


def check_gpt2(model: nn.Module, tp: int) -> None:
    c = model.config
    _divisible({"n_head": c.n_head, "n_embd": c.n_embd, "n_inner": c.n_inner or 4 * c.n_embd}, tp, "gpt2")

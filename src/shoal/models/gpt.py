"""A small decoder-only transformer (nanoGPT / torchtitan llama shape) with its parallel plans.

Pre-norm blocks of causal self-attention (rotary positions, so no position table to shard)
and a GELU MLP. The model is a straight chain of layers (`pipeline_layers`), which is what
lets the pipeline split it anywhere between blocks, and every parameter is initialised from
its own name (`init_parameter`), so a model built on the meta device and materialized shard
by shard starts from exactly the weights of an ordinary build.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    seq_len: int
    dim: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    tie_head: bool = False


def rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on (batch, seq, heads, head_dim), computed on the fly."""
    t, hd = x.shape[1], x.shape[-1]
    freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32, device=x.device) / hd))
    angles = torch.outer(torch.arange(t, dtype=torch.float32, device=x.device), freqs)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.head_dim = cfg.dim // cfg.heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(cfg.dim, cfg.dim, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # under tensor parallel each rank holds only its share of the heads (and a batch may be empty: no -1)
        q, k, v = (y.view(b, t, y.shape[-1] // self.head_dim, self.head_dim) for y in (w(x) for w in (self.wq, self.wk, self.wv)))
        q, k = rotate(q), rotate(k)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, y.shape[1] * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.w2 = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.dim)
        self.attention = Attention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.dim)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, seed: int = 0):
        super().__init__()
        if cfg.dim % cfg.heads or (cfg.dim // cfg.heads) % 2:
            raise ValueError(f"gpt: dim = {cfg.dim} must be heads = {cfg.heads} x an even head size")
        self.cfg, self.seed = cfg, seed
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.layers)})  # dict: stages keep the names
        self.norm = nn.LayerNorm(cfg.dim)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_head:
            self.output.weight = self.tok_embeddings.weight
        if not self.output.weight.is_meta:
            self.init_weights()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h)
        return self.output(self.norm(h))

    def pipeline_layers(self) -> list[str]:
        """The chain forward() runs, in order: the units a pipeline split may cut between."""
        return ["tok_embeddings", *(f"layers.{i}" for i in self.layers), "norm", "output"]

    def checkpoint_layers(self) -> list[str]:
        return [f"layers.{i}" for i in self.layers]

    def init_parameter(self, name: str, shape: torch.Size) -> torch.Tensor:
        """The initial value of one parameter, from its name alone (so shards can be made independently)."""
        leaf = name.rsplit(".", 1)[-1]
        if "norm" in name:
            return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
        if leaf == "bias":
            return torch.zeros(shape)
        std = 0.02 / math.sqrt(2 * self.cfg.layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.randn(shape, generator=gen) * std

    @torch.no_grad()
    def init_weights(self) -> None:
        for name, p in self.named_parameters():
            p.copy_(self.init_parameter(name, p.shape))

    def tensor_parallel_plan(self, sequence_parallel: bool = True) -> dict:
        """Megatron-style plan: column-parallel in, row-parallel out; norms sharded over the sequence."""
        from torch.distributed.tensor import Replicate, Shard
        from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel, SequenceParallel

        seq = Shard(1) if sequence_parallel else Replicate()
        plan = {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
            "output": ColwiseParallel(input_layouts=seq, output_layouts=Replicate()),
        }
        for i in self.layers:
            p = f"layers.{i}"
            plan.update({f"{p}.attention.{w}": ColwiseParallel() for w in ("wq", "wk", "wv")})
            plan[f"{p}.attention.wo"] = RowwiseParallel(output_layouts=seq)
            plan[f"{p}.feed_forward.w1"] = ColwiseParallel()
            plan[f"{p}.feed_forward.w2"] = RowwiseParallel(output_layouts=seq)
            if sequence_parallel:  # norms run on sequence shards; attention and MLP gather the whole sequence
                plan[f"{p}.attention_norm"] = plan[f"{p}.ffn_norm"] = SequenceParallel()
                for part in ("attention", "feed_forward"):
                    plan[f"{p}.{part}"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        if sequence_parallel:
            plan["norm"] = SequenceParallel()
        return plan

    def check_tensor_parallel(self, tp: int) -> None:
        for what, n in (("model.heads", self.cfg.heads), ("vocabulary (padded)", self.cfg.vocab_size), ("model.dim", self.cfg.dim)):
            if n % tp:
                raise ValueError(f"{what} = {n} must be divisible by parallel.tp = {tp}")


def padded_vocab(vocab: int, multiple: int = 64) -> int:
    """Round the vocabulary up so every tensor-parallel degree up to `multiple` splits it evenly."""
    return -(-vocab // multiple) * multiple


def build_gpt(seq_len: int, vocab: int, dim: int = 128, layers: int = 4, heads: int = 4, mlp_ratio: int = 4,
              tie_head: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> GPT:
    cfg = GPTConfig(padded_vocab(vocab), seq_len, dim, layers, heads, mlp_ratio, tie_head)
    with torch.device(device):
        return GPT(cfg, seed)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy per token, summed over each sequence's mean: the trainer's "sum over samples"."""
    per_token = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").view(targets.shape)
    per_seq = per_token.mean(dim=-1) if per_token.dim() > 1 else per_token
    return per_seq.sum() if reduction == "sum" else per_seq.mean()

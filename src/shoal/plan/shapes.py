"""A transformer's size as the cost model needs it: parameters, FLOPs per token, activation bytes per layer.

Why formulas and not the model itself: the planner must size models that do not fit this machine
(a 175B GPT), so everything is computed from the shape. Conventions (Megatron-LM, Narayanan et al.
2021; Korthikanti et al. 2022):
- a matmul of an (m x k) by a (k x n) costs 2mkn FLOPs; backward costs twice forward; recomputing
  activations adds one more forward;
- attention adds 2 * 2 * seq * dim FLOPs per token and layer (scores and weighted sum, causal mask
  not discounted, as Megatron counts it);
- activations kept per layer and sequence of a micro-batch (16-bit): seq * b * dim * 34 bytes, plus
  5 * heads * seq^2 * b when the attention scores are kept (no fused/flash attention);
- element-wise work (norms, activations, dropout, softmax, residual adds) is bound by memory traffic,
  not FLOPs: forward writes each kept tensor once and the next op reads it (2 passes over the kept
  bytes), backward reads it and the incoming gradient and writes the outgoing one (3), and
  recomputation repeats the forward (2 more).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from shoal.errors import ShoalError


@dataclass(frozen=True)
class ModelShape:
    layers: int
    dim: int
    heads: int
    seq: int
    vocab: int
    batch: int  # global batch, in sequences
    ffn: int = 0  # MLP hidden width (0: 4 x dim)
    kv_heads: int = 0  # grouped-query attention (0: = heads)
    gated: bool = False  # SwiGLU: three MLP matrices instead of two
    tied: bool = False  # output head shares the embedding

    @property
    def ffn_dim(self) -> int:
        return self.ffn or 4 * self.dim

    @property
    def kv_dim(self) -> int:
        return (self.kv_heads or self.heads) * (self.dim // self.heads)

    def layer_params(self) -> int:
        attention = 2 * self.dim * self.dim + 2 * self.dim * self.kv_dim
        mlp = (3 if self.gated else 2) * self.dim * self.ffn_dim
        return attention + mlp + 2 * self.dim  # two norms

    def embedding_params(self) -> int:
        return self.vocab * self.dim * (1 if self.tied else 2) + self.dim  # embedding, head, final norm

    def params(self) -> int:
        return self.layers * self.layer_params() + self.embedding_params()

    def forward_flops_per_token(self) -> float:
        matmuls = self.layers * (self.layer_params() - 2 * self.dim) + self.vocab * self.dim  # the head; embedding is a lookup
        return 2.0 * matmuls + 4.0 * self.layers * self.seq * self.dim

    def train_flops_per_token(self, recompute: bool = False) -> float:
        return (4.0 if recompute else 3.0) * self.forward_flops_per_token()

    def activation_bytes_per_layer(self, micro_batch: int, tp: int = 1, flash: bool = True, dtype_bytes: int = 2) -> float:
        """Bytes one layer keeps for backward for one micro-batch, tensor parallel with sequence parallelism."""
        sbh = self.seq * micro_batch * self.dim
        kept = 34.0 * sbh + (0.0 if flash else 5.0 * self.heads * self.seq * self.seq * micro_batch)
        return kept * dtype_bytes / 2 / tp

    def elementwise_bytes_per_layer(self, micro_batch: int, tp: int = 1, flash: bool = True, dtype_bytes: int = 2,
                                    recompute: bool = False) -> float:
        """Bytes one layer's element-wise ops move through memory for one micro-batch's forward and backward."""
        return (7.0 if recompute else 5.0) * self.activation_bytes_per_layer(micro_batch, tp, flash, dtype_bytes)


SHAPE_KEYS = {f.name: f.type for f in fields(ModelShape)}


def with_overrides(shape: ModelShape | None, text: str) -> ModelShape:
    """`layers=96,dim=12288,...` over a shape (or from nothing: then layers, dim, heads, seq, vocab and batch are needed)."""
    given: dict = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SHAPE_KEYS:
            raise ShoalError(f"plan --model: '{item}' is not KEY=VALUE with KEY one of {', '.join(SHAPE_KEYS)}")
        if SHAPE_KEYS[key] in ("bool", bool):
            given[key] = value.strip().lower() in ("1", "true", "yes")
        else:
            try:
                given[key] = int(value)
            except ValueError:
                raise ShoalError(f"plan --model: {key} must be a whole number (got {value!r})") from None
            if given[key] < (0 if key in ("ffn", "kv_heads") else 1):
                raise ShoalError(f"plan --model: {key} must be positive (got {value})")
    if shape is None:
        missing = [k for k in ("layers", "dim", "heads", "seq", "vocab", "batch") if k not in given]
        if missing:
            raise ShoalError(f"plan: give a job file or --model with {', '.join(missing)} (e.g. --model layers=24,dim=1024,heads=16,"
                             "seq=2048,vocab=50257,batch=512)")
        shape = ModelShape(**given)
    else:
        shape = replace(shape, **given)
    if shape.dim % shape.heads:
        raise ShoalError(f"plan: heads ({shape.heads}) must divide dim ({shape.dim})")
    return shape

"""Text generation for the built-in gpt: a key-value cache (each step feeds one new token and attends over the
keys and values kept from earlier steps) or recomputation of the whole sequence every step, which gives the
same tokens and is what the cache is measured against. Sampling: greedy at temperature 0, else softmax of
logits / temperature over the top-k, drawn from a seeded generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shoal.errors import ShoalError


def rotate_from(x: torch.Tensor, start: int, table: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """gpt.rotate for positions start..start+t-1 (rotate is this with start = 0); `table` holds cos and sin of
    positions 0..n-1 (the same products, so the same values), which saves recomputing them every step."""
    t, hd = x.shape[1], x.shape[-1]
    if table is None:
        table = rotary_table(hd, start + t, x.device)
    cos, sin = table[0][None, start : start + t, None, :], table[1][None, start : start + t, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def rotary_table(hd: int, positions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32, device=device) / hd))
    angles = torch.outer(torch.arange(positions, dtype=torch.float32, device=device), freqs)
    return angles.cos(), angles.sin()


class KVCache:
    """Per layer, the rotated keys and the values of every position seen so far: (batch, heads, positions, head_dim)."""

    def __init__(self):
        self.k: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None

    def rotary(self, hd: int, positions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for at least `positions` positions, grown by doubling."""
        if self._table is None or self._table[0].shape[0] < positions:
            self._table = rotary_table(hd, max(2 * positions, 64), device)
        return self._table

    def extend(self, name: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if name in self.k:
            k, v = torch.cat([self.k[name], k], dim=2), torch.cat([self.v[name], v], dim=2)
        self.k[name], self.v[name] = k, v
        return k, v

    @property
    def length(self) -> int:
        return next(iter(self.k.values())).shape[2] if self.k else 0


def _attend(attn: nn.Module, x: torch.Tensor, cache: KVCache, name: str, start: int) -> torch.Tensor:
    b, t, _ = x.shape
    hd = attn.head_dim
    # under tensor parallel each rank holds its share of the heads: count them from the projection's width
    q, k, v = (y.view(b, t, y.shape[-1] // hd, hd) for y in (w(x) for w in (attn.wq, attn.wk, attn.wv)))
    table = cache.rotary(hd, start + t, x.device)
    q, k = rotate_from(q, start, table), rotate_from(k, start, table)
    k, v = cache.extend(name, k.transpose(1, 2), v.transpose(1, 2))
    q = q.transpose(1, 2)
    if start == 0:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
    else:  # new positions see every cached one and the new ones up to themselves
        mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return attn.wo(y.transpose(1, 2).reshape(b, t, y.shape[1] * hd))


@torch.no_grad()
def run_cached(root: nn.Module, names: list[str], x: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
    """The gpt's chain `names` (submodules of `root`: the whole model's pipeline_layers, or one pipeline stage's)
    on positions start.. of `x` (token ids, or the hidden states the stage before sent), keeping each block's keys
    and values in `cache`. From the final norm on only the last position is computed: it is all generation needs."""
    for name in names:
        module = root.get_submodule(name)
        if name.startswith("layers."):
            x = x + _attend(module.attention, module.attention_norm(x), cache, name.removeprefix("layers."), start)
            x = x + module.feed_forward(module.ffn_norm(x))
        elif name == "norm":
            x = module(x[:, -1:])
        else:
            x = module(x)
    return x


@torch.no_grad()
def cached_logits(model: nn.Module, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits of the last position after feeding `tokens` (the positions after those already in `cache`)."""
    return run_cached(model, model.pipeline_layers(), tokens, cache, cache.length)[:, -1]


def pick(logits: torch.Tensor, vocab: int, temperature: float, top_k: int, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row; the padded vocabulary's extra logits are never chosen."""
    logits = logits[:, :vocab].float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, max_new: int, vocab: int, temperature: float = 0.0, top_k: int = 0,
             seed: int = 0, cache: bool = True, full_logits=None) -> torch.Tensor:
    """prompt (batch, t) of token ids -> (batch, t + max_new). `full_logits(tokens)` replaces model(tokens) when
    recomputing (the pipeline path passes its own)."""
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ShoalError("generate: the prompt must hold at least one token")
    generator = torch.Generator().manual_seed(seed)
    tokens = prompt
    kv = KVCache()
    forward = full_logits or (lambda seq: model(seq)[:, -1])
    for i in range(max_new):
        if cache:
            logits = cached_logits(model, tokens if i == 0 else tokens[:, -1:], kv)
        else:
            logits = forward(tokens)
        tokens = torch.cat([tokens, pick(logits, vocab, temperature, top_k, generator)[:, None]], dim=1)
    return tokens


def encode(text: str) -> torch.Tensor:
    """Characters -> ids of the bundled Shakespeare vocabulary (what the built-in gpt trains on)."""
    from shoal.data.text import corpus

    _, vocab = corpus()
    lookup = {c: i for i, c in enumerate(vocab)}
    unknown = [c for c in text if c not in lookup]
    if unknown:
        raise ShoalError(f"prompt: character {unknown[0]!r} is not in the model's vocabulary")
    return torch.tensor([[lookup[c] for c in text]], dtype=torch.long)


def decode(tokens) -> str:
    from shoal.data.text import decode as text_decode

    return text_decode(tokens)

"""gpt generation: the key-value cache gives the logits (1e-5) and tokens of recomputing the whole sequence."""

from __future__ import annotations

import pytest
import torch

from shoal.errors import ShoalError
from shoal.infer.generate import KVCache, cached_logits, decode, encode, generate, pick, run_cached
from shoal.models.gpt import build_gpt


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_gpt(16, 50, dim=32, layers=2, heads=4, seed=3).eval()


def test_cached_logits_equal_the_full_forward_at_every_step(model):
    tokens = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(1))
    cache = KVCache()
    first = cached_logits(model, tokens[:, :5], cache)
    with torch.no_grad():
        assert (first - model(tokens[:, :5])[:, -1]).abs().max() <= 1e-5
        for t in range(5, 20):  # one token at a time, past the training length of 16 (rotary positions have no table)
            step = cached_logits(model, tokens[:, t : t + 1], cache)
            assert (step - model(tokens[:, : t + 1])[:, -1]).abs().max() <= 1e-5
    assert cache.length == 20


def test_a_chunk_after_the_cache_sees_the_cached_positions(model):
    tokens = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(2))
    cache = KVCache()
    cached_logits(model, tokens[:, :7], cache)
    with torch.no_grad():
        assert (cached_logits(model, tokens[:, 7:], cache) - model(tokens)[:, -1]).abs().max() <= 1e-5


@pytest.mark.parametrize("temperature,top_k", [(0.0, 0), (0.9, 0), (1.3, 5)])
def test_generation_with_the_cache_equals_generation_without(model, temperature, top_k):
    prompt = torch.tensor([[1, 2, 3]])
    a = generate(model, prompt, 40, 50, temperature, top_k, seed=7, cache=True)
    b = generate(model, prompt, 40, 50, temperature, top_k, seed=7, cache=False)
    assert a.shape == (1, 43) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)
    assert int(a.max()) < 50  # the padded vocabulary's extra logits are never drawn


def test_pick_keeps_only_the_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    draws = {int(pick(logits, 5, 1.0, 2, torch.Generator().manual_seed(s))) for s in range(50)}
    assert draws == {1, 2}
    assert int(pick(logits, 5, 0.0, 0, None)) == 1


def test_prompts_are_checked_and_round_trip():
    assert decode(encode("ROMEO:")[0]) == "ROMEO:"
    with pytest.raises(ShoalError, match="not in the model's vocabulary"):
        encode("\u2603")
    with pytest.raises(ShoalError, match="at least one token"):
        generate(build_gpt(8, 10, dim=8, layers=1, heads=2), torch.zeros(1, 0, dtype=torch.long), 3, 10)


def test_stage_by_stage_cached_generation_equals_recomputing(model):
    """What --split pp runs with the cache, in one process: three stages ([embeddings, block 0], [block 1, norm],
    [head]), each with its own cache, the hidden states passed on; the tokens equal recomputing the sequence."""
    from shoal.parallel.pipeline import StageChain

    chains = [["tok_embeddings", "layers.0"], ["layers.1", "norm"], ["output"]]
    stages = [StageChain(model, names) for names in chains]
    caches = [KVCache() for _ in stages]
    generator = torch.Generator().manual_seed(5)
    tokens, start = torch.tensor([[4, 8, 15, 16]]), 0
    for _ in range(30):
        h = tokens[:, start:]
        for stage, cache in zip(stages, caches):
            h = run_cached(stage, stage.names, h, cache, start)
        start = tokens.shape[1]
        tokens = torch.cat([tokens, pick(h[:, -1], 50, 1.1, 6, generator)[:, None]], dim=1)
    assert torch.equal(tokens, generate(model, tokens[:, :4], 30, 50, 1.1, 6, seed=5, cache=False))

"""Parallel strategies: each is `apply(model, env, cfg)` in a file of its own."""

"""Job files the inference and serving benchmarks train first: one wide MLP on synthetic data (a model whose forward
pass, not Python, is the cost)."""


def wide_mlp(name: str, hidden: tuple[int, ...] = (1024, 1024, 1024)) -> str:
    return f'''name = "{name}"
[model]
name = "mlp"
hidden = {list(hidden)}
[data]
name = "synthetic"
synthetic_features = 64
synthetic_classes = 10
synthetic_samples = 512
[train]
global_batch_size = 64
steps = 1
'''

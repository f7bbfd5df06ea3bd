"""A model's linear layers with their weights packed once for oneDNN, for inference on CPU (`--prepack auto|on|off`).

On CPU nn.Linear calls MKL's fp32 matrix multiply, which packs the weight matrix again on every call with more than
one row. For the small batches a service sees, that packing costs more than the multiply itself: on the 64 -> 3 x
4096 -> 10 MLP (one thread) a batch of 3 takes 20.7 ms against 6.9 ms for one sample. A weight held as a oneDNN
tensor (`Tensor.to_mkldnn`, what torch.utils.mkldnn's TorchScript MkldnnLinear holds; TorchScript is deprecated)
and multiplied by `aten::mkldnn_linear` is converted once: the same batch takes 10.4 ms, a batch of 32 28.6 ms
against 36.6 (BENCHMARKS.md, "What a batch costs the served model").

Only modules that are exactly nn.Linear with fp32 CPU weights are swapped, in place (a model keeps one copy of its
weights). A float sample checks the packed model against the plain forward pass before anything is served: where it
raises, or differs beyond rounding (a model that reads a layer's `.weight` itself), the layers go back to plain
nn.Linear and one line says why. Small layers lose: oneDNN converts every input and output, which costs more than
MKL's repacking of a small matrix (a 3 x 1024 MLP's lone sample: 0.95 ms packed, 0.74 as trained), so by default
(`auto`) both are timed on a few batch sizes and the packed layers stay only when clearly faster. Token inputs (the
gpt, whose replica also generates) and dict inputs stay plain.
"""

from __future__ import annotations

import torch
from torch import nn

from shoal.errors import ShoalError
from shoal.timing import fastest
from shoal.train.losses import scores_of

RTOL = 1e-4  # oneDNN sums in another order than MKL: measured ~1e-7 relative on every layer


class PackedLinear(nn.Module):
    """nn.Linear's forward pass on weights converted once to oneDNN tensors (inference only: no gradients)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight.detach().to_mkldnn()
        self.bias = linear.bias.detach().to_mkldnn() if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.mkldnn_linear(x.contiguous().to_mkldnn(), self.weight, self.bias).to_dense()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, oneDNN"


def _swap(model: nn.Module, names: list[str], make) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child)))


def _plain(packed: PackedLinear) -> nn.Linear:
    """Back from oneDNN's layout: the same weights as an ordinary nn.Linear."""
    linear = nn.Linear(packed.in_features, packed.out_features, bias=packed.bias is not None, device="meta")
    linear.weight = nn.Parameter(packed.weight.to_dense(), requires_grad=False)
    if packed.bias is not None:
        linear.bias = nn.Parameter(packed.bias.to_dense(), requires_grad=False)
    return linear.eval()


MODES = ("auto", "on", "off")
TIMED_BATCHES = (1, 4, 16)  # the sizes a service's batches take; `shoal infer` times its own --batch
REPEATS = 3  # auto times the fastest of this many passes over the timed batches (shoal.timing.fastest)
KEEP_BELOW = 0.9  # auto keeps the packed layers only when they take at most 90% of the plain ones' time


def check_mode(mode: str) -> None:
    """Refuse an unknown --prepack before any process starts."""
    if mode not in MODES:
        raise ShoalError(f"--prepack {mode!r}: choose one of {', '.join(MODES)}")


def worth_it(plain_s: float, packed_s: float) -> bool:
    """auto's rule: a clear gain, not noise (on small layers oneDNN's conversions of every input cost more than
    MKL's repacking: a 3 x 1024 MLP's lone sample took 0.95 ms packed against 0.74)."""
    return packed_s <= KEEP_BELOW * plain_s


def prepack_linears(model: nn.Module, sample: torch.Tensor | None, key: str = "logits", mode: str = "auto",
                    batches: tuple[int, ...] = TIMED_BATCHES) -> str:
    """Pack `model`'s linear layers in place, checked on `sample` (a float batch of the model's inputs, at least
    max(batches) long; None: keep it plain). mode "auto" also times both on batches of these sizes and keeps the
    faster; "on" keeps the packed layers whenever they check out; "off" leaves the model as trained. Returns the
    line to log."""
    check_mode(mode)
    if mode == "off":
        return "linear layers not prepacked (--prepack off)"
    if sample is None or not sample.is_floating_point():
        return "linear layers not prepacked: the inputs are not one float tensor"
    if not torch.backends.mkldnn.is_available():
        return "linear layers not prepacked: this torch has no oneDNN"
    names = [name for name, m in model.named_modules() if type(m) is nn.Linear and m.weight.dtype == torch.float32
             and m.weight.device.type == "cpu" and type(m.weight.data) is torch.Tensor]  # a DTensor's shard is not one
    if not names:
        return "linear layers not prepacked: the model has no fp32 nn.Linear on CPU"
    timed = mode == "auto" and bool(batches)
    inputs = [sample[:b] for b in batches]

    def one_pass() -> None:  # every timed batch once: the same call times the plain layers and the packed ones
        for x in inputs:
            model(x)

    with torch.no_grad():
        want = scores_of(model(sample), key).float()
        plain_s = fastest(one_pass, REPEATS) if timed else 0.0
        _swap(model, names, PackedLinear)
        try:
            got = scores_of(model(sample), key).float()
            why = None if torch.allclose(got, want, rtol=RTOL, atol=RTOL * float(want.abs().max())) else \
                f"its outputs differ from the plain model's by {float((got - want).abs().max()):.3g}"
        except Exception as err:  # a forward pass that uses a layer's weight itself: keep the plain layers
            why = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        speed = ""
        if why is None and timed:
            packed_s = fastest(one_pass, REPEATS)
            measured = f"{plain_s / packed_s:.2f}x the plain layers' speed on batches of {', '.join(map(str, batches))}"
            speed = f"; {measured}"
            if not worth_it(plain_s, packed_s):
                why = f"oneDNN ran at {measured}"
        if why is not None:
            _swap(model, names, _plain)
            return f"linear layers not prepacked ({why}); serving the plain model"
    return f"prepacked {len(names)} linear layers for oneDNN (checked against the plain model{speed})"


def sample_for(spec, batch: int = max(TIMED_BATCHES)) -> torch.Tensor | None:
    """A float batch of a classifier's inputs, or None where inputs are tokens or dicts."""
    if spec.task == "lm" or spec.dict_inputs:
        return None
    return torch.randn(batch, *spec.input_shape, generator=torch.Generator().manual_seed(0))

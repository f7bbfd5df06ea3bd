"""Model registry: built-in names, or a user factory `package.module:function`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import torch
from torch import nn

from shoal.config import ModelConfig
from shoal.errors import ShoalError
from shoal.models.cnn import build_cnn
from shoal.models.gpt import build_gpt
from shoal.models.mlp import build_mlp

BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda shape, classes, cfg: build_mlp(shape, classes, cfg.hidden, cfg.dropout),
    "cnn": lambda shape, classes, cfg: build_cnn(shape, classes, cfg.channels, dropout=cfg.dropout),
    "gpt": lambda shape, vocab, cfg: build_gpt(shape[0], vocab, cfg.dim, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.tie_head, torch.initial_seed()),
}


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (the line a traceback ends with)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def resolve_factory(spec: str, field: str = "model.name") -> Callable[..., nn.Module]:
    """`package.module:function` of a user's; `field` is the job key that named it (for the message)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        if field == "model.name":
            raise ShoalError(f"model.name: '{spec}' is neither a built-in ({', '.join(BUILTIN)}) nor a factory 'package.module:function'")
        raise ShoalError(f"{field}: '{spec}' is not a function 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ShoalError(f"{field}: cannot import module '{module_name}' ({err}); is it installed or on PYTHONPATH?") from None
    except SyntaxError as err:
        raise ShoalError(f"{field}: module '{module_name}' has a syntax error ({err.filename}, line {err.lineno}: {err.msg})") from None
    except Exception as err:  # the module's own code failed while importing
        raise ShoalError(f"{field}: importing module '{module_name}' failed: {one_line(err)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ShoalError(f"{field}: module '{module_name}' has no function '{attr}'")
    return factory


def _call_factory(factory: Callable[..., nn.Module], shape, classes: int, cfg: ModelConfig) -> nn.Module:
    params = inspect.signature(factory).parameters
    kwargs = dict(cfg.kwargs)
    if "input_shape" in params:
        kwargs.setdefault("input_shape", shape)
    if "num_classes" in params:
        kwargs.setdefault("num_classes", classes)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise ShoalError(f"model.kwargs: {cfg.name} rejected its arguments ({err})") from None
    try:
        model = factory(**kwargs)
    except ShoalError:
        raise
    except Exception as err:  # the user's code: its own last line says what went wrong
        raise ShoalError(f"model.name: factory {cfg.name} failed: {one_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ShoalError(f"model.name: {cfg.name} returned {type(model).__name__}, not a torch.nn.Module")
    if not any(True for _ in model.parameters()):
        raise ShoalError(f"model.name: {cfg.name} returned a {type(model).__name__} without parameters: there is nothing to train")
    return model


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """The same seed gives the same initial weights on every rank and every world size."""
    torch.manual_seed(seed)
    if cfg.name.startswith("hf:"):  # a transformers model from its config class (shoal.models.hf)
        from shoal.models.hf import build_hf

        return build_hf(cfg.name, input_shape, num_classes, cfg.kwargs, cfg.dropout)
    if cfg.name in BUILTIN:
        try:
            return BUILTIN[cfg.name](input_shape, num_classes, cfg)
        except ValueError as err:
            raise ShoalError(f"model.name: {err}") from None
    return _call_factory(resolve_factory(cfg.name), input_shape, num_classes, cfg)


__all__ = ["build_cnn", "build_gpt", "build_mlp", "build_model", "one_line", "resolve_factory"]

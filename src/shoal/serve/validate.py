"""Request checks: every malformed request becomes a 4xx whose message says what is wrong, before any replica sees it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

MAX_NEW_TOKENS = 1024


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    input_shape: tuple[int, ...]
    classes: int  # vocabulary for the gpt
    lm: bool
    max_samples: int  # per request
    max_body_bytes: int
    gpt: bool
    raw_rows: bool = False  # the run trained on a `shoal prep` output: samples may be raw rows (JSON objects)
    named: bool = False  # the model takes dict batches (hf: models): samples are token ids, or {"input_ids", "attention_mask"}
    vocab: int = 0  # named inputs of a classifier: its embedding's vocabulary (a language model's is `classes`)


def _no_constants(name: str):
    raise BadRequest(400, f"malformed JSON: {name} is not a JSON number")


def parse_body(body: bytes, content_type: str, limits: Limits) -> dict:
    if len(body) > limits.max_body_bytes:
        raise BadRequest(413, f"body of {len(body)} bytes exceeds the limit of {limits.max_body_bytes}")
    if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
        raise BadRequest(415, f"content type {content_type!r}: send application/json")
    try:
        data = json.loads(body, parse_constant=_no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"malformed JSON: {err}") from None
    if not isinstance(data, dict):
        raise BadRequest(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _only(data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(422, f"unknown field '{unknown[0]}'; allowed: {', '.join(sorted(allowed))}")


def predict_inputs(data: dict, limits: Limits) -> np.ndarray:
    """{"inputs": [sample, ...]} -> an array of the model's input shape and dtype."""
    _only(data, {"inputs"})
    if "inputs" not in data:
        raise BadRequest(422, "missing field 'inputs': send {\"inputs\": [sample, ...]}")
    inputs = data["inputs"]
    if not isinstance(inputs, list):
        raise BadRequest(422, f"'inputs' must be a list of samples, got {type(inputs).__name__}")
    if not inputs:
        raise BadRequest(422, "'inputs' is empty: send at least one sample")
    if len(inputs) > limits.max_samples:
        raise BadRequest(413, f"{len(inputs)} samples exceed the limit of {limits.max_samples} per request")
    if limits.named:
        return named_inputs(inputs, limits)
    if any(isinstance(s, dict) for s in inputs):
        return raw_rows(inputs, limits)
    want = list(limits.input_shape)
    x = _fast_array(inputs)
    if x is None or list(x.shape[1:]) != want or (limits.lm and x.dtype.kind == "f"):
        for i, sample in enumerate(inputs):  # the slow walk, only to say where the request is wrong
            shape = _shape(sample, f"inputs[{i}]", limits.lm)
            if shape != want:
                raise BadRequest(422, f"inputs[{i}] has shape {shape}, the model takes {want}")
        raise BadRequest(422, "'inputs' must be nested lists of numbers")
    x = x.astype(np.int64 if limits.lm else np.float32, copy=False)
    if limits.lm and ((x < 0) | (x >= limits.classes)).any():
        i = int(np.nonzero(((x < 0) | (x >= limits.classes)).reshape(len(x), -1).any(1))[0][0])
        raise BadRequest(422, f"inputs[{i}] holds a token outside 0..{limits.classes - 1}")
    if not limits.lm and not np.isfinite(x).all():
        raise BadRequest(422, "inputs hold a number too large for float32")
    return x


NAMED = ("input_ids", "attention_mask")  # token_type_ids are not served: requests batched together must agree on their fields


def named_inputs(inputs: list, limits: Limits) -> dict[str, np.ndarray]:
    """Samples of a model that takes named inputs: each a list of token ids or an object of `input_ids` and
    optionally `attention_mask` (all ones where absent), each of the model's sequence length."""
    seq = limits.input_shape[0]
    columns: dict[str, list] = {}
    for i, sample in enumerate(inputs):
        row = sample if isinstance(sample, dict) else {"input_ids": sample}
        unknown = [k for k in row if k not in NAMED]
        if unknown:
            raise BadRequest(422, f"inputs[{i}] has field '{unknown[0]}'; a sample has {', '.join(NAMED)}")
        if "input_ids" not in row:
            raise BadRequest(422, f"inputs[{i}] has no 'input_ids'")
        ids = row["input_ids"]
        row = {"input_ids": ids, "attention_mask": row.get("attention_mask", [1] * len(ids) if isinstance(ids, list) else None)}
        for key, value in row.items():
            if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
                raise BadRequest(422, f"inputs[{i}].{key} must be a list of integers")
            if len(value) != seq:
                raise BadRequest(422, f"inputs[{i}].{key} has {len(value)} tokens, the model takes {seq}: pad on the right and "
                                      "send an attention_mask with 0 there")
            columns.setdefault(key, []).append(value)
    x = {k: np.asarray(v, dtype=np.int64) for k, v in columns.items()}
    ids, vocab = x["input_ids"], limits.vocab or limits.classes
    if ((ids < 0) | (ids >= vocab)).any():
        i = int(np.nonzero(((ids < 0) | (ids >= vocab)).any(1))[0][0])
        raise BadRequest(422, f"inputs[{i}].input_ids holds a token outside the vocabulary 0..{vocab - 1}")
    mask = x.get("attention_mask")
    if mask is not None and ((mask != 0) & (mask != 1)).any():
        raise BadRequest(422, f"inputs[{int(np.nonzero(((mask != 0) & (mask != 1)).any(1))[0][0])}].attention_mask must hold 0 and 1 only")
    return x


def raw_rows(inputs: list, limits: Limits) -> list[dict]:
    """Raw rows (one JSON object of column: value each) for the run's fitted preprocessing, checked for form here;
    their columns and types are checked against the run's raw data where the steps run (shoal.infer.prepare)."""
    if not limits.raw_rows:
        raise BadRequest(422, "inputs[0] is a JSON object (a raw row), but this run was not trained on a `shoal prep` output "
                              "with fitted steps; send samples as the model takes them (nested lists of numbers)")
    for i, row in enumerate(inputs):
        if not isinstance(row, dict):
            raise BadRequest(422, f"inputs[{i}] is not a JSON object: send every sample as a raw row, or none")
        for key, value in row.items():
            if value is not None and (isinstance(value, (list, dict)) or (isinstance(value, float) and not math.isfinite(value))):
                raise BadRequest(422, f"inputs[{i}].{key} is {json.dumps(value)[:40]}: a raw value must be a number, string, "
                                      "true/false or null")
    return inputs


def _fast_array(inputs: list) -> np.ndarray | None:
    """numpy's reading of a well-formed request (None when it is ragged or holds anything but numbers)."""
    try:
        x = np.asarray(inputs)
    except (ValueError, TypeError):
        return None
    return x if x.dtype.kind in "iuf" else None


def _shape(value, where: str, integers: bool) -> list[int]:
    """The nested list's shape, or a 422 naming where it is ragged or not a number."""
    if isinstance(value, list):
        if not value:
            raise BadRequest(422, f"{where} is an empty list")
        shapes = [_shape(v, f"{where}[{j}]", integers) for j, v in enumerate(value)]
        if any(s != shapes[0] for s in shapes):
            raise BadRequest(422, f"{where} is ragged: its elements have different shapes")
        return [len(value), *shapes[0]]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(422, f"{where} is {json.dumps(value)[:40]}, not a number")
    if integers and not isinstance(value, int):
        raise BadRequest(422, f"{where} is {value}: the gpt takes integer token ids")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(422, f"{where} is not finite")
    return []


def generate_request(data: dict, limits: Limits) -> dict:
    """{"prompt": text | "tokens": [ids], "max_new_tokens", "temperature", "top_k", "seed"} -> the replica's payload."""
    if not limits.gpt:
        raise BadRequest(404, "this model does not generate text (only the gpt does); use /v1/predict")
    _only(data, {"prompt", "tokens", "max_new_tokens", "temperature", "top_k", "seed"})
    if ("prompt" in data) == ("tokens" in data):
        raise BadRequest(422, "give exactly one of 'prompt' (text) or 'tokens' (ids)")
    if "prompt" in data:
        if not isinstance(data["prompt"], str) or not data["prompt"]:
            raise BadRequest(422, "'prompt' must be a non-empty string")
        from shoal.errors import ShoalError
        from shoal.infer.generate import encode

        try:
            tokens = encode(data["prompt"])[0].tolist()
        except ShoalError as err:
            raise BadRequest(422, str(err)) from None
    else:
        tokens = data["tokens"]
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise BadRequest(422, "'tokens' must be a non-empty list of integer ids")
        if any(not 0 <= t < limits.classes for t in tokens):
            raise BadRequest(422, f"'tokens' holds an id outside 0..{limits.classes - 1}")
    payload = {"tokens": tokens,
               "max_new_tokens": _number(data, "max_new_tokens", 32, int, 1, MAX_NEW_TOKENS),
               "temperature": float(_number(data, "temperature", 0.0, float, 0.0, 100.0)),
               "top_k": _number(data, "top_k", 0, int, 0, limits.classes),
               "seed": _number(data, "seed", 0, int, 0, 2**63 - 1)}
    return payload


def _number(data: dict, key: str, default, kind, lo, hi):
    value = data.get(key, default)
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise BadRequest(422, f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {json.dumps(value)[:40]}")
    if not lo <= value <= hi:
        raise BadRequest(422, f"'{key}' = {value} is outside {lo}..{hi}")
    return value

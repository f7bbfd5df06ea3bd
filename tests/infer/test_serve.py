"""`shoal serve` over real HTTP: answers equal the model's, malformed requests get a 4xx that says why, a full
queue answers 503 + Retry-After, a replica SIGKILLed under load loses no accepted request, the token is required
everywhere but the probes, and SIGTERM finishes what was accepted and exits 0. One server for the whole module."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from serving import Server

from shoal.infer import build, resolve
from shoal.infer.generate import encode, generate
from shoal.serve.replica import DELAY_ENV

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # every batch takes >= 50 ms: requests overlap, so batching, a full queue and a mid-batch kill are all reachable
    s = Server(runs["mlp"], "--replicas", "2", "--max-batch", "8", "--max-wait-ms", "20", "--max-queue", "8",
               "--max-request-samples", "16", "--max-body-bytes", "200000", "--prepack", "on", token=TOKEN, env={DELAY_ENV: "0.05"}, log=log)
    try:
        yield s.wait_ready()
    finally:
        s.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def digits(runs):
    return np.load(runs["digits"])["x"]


def parallel(n: int, fn) -> list:
    out = [None] * n
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, fn(i))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_predictions_equal_the_model(server, runs, digits):
    status, _, body = server.request("POST", "/v1/predict", {"inputs": digits[:5].tolist()})
    assert status == 200, body
    with torch.no_grad():
        expected = build(resolve(runs["mlp"]))(torch.from_numpy(digits[:5]))
    assert np.abs(np.array(body["outputs"]) - expected.numpy()).max() <= 1e-5
    assert body["predictions"] == expected.argmax(1).tolist()
    log = open(server.log.name).read()
    assert all(f"replica {i}: prepacked 2 linear layers for oneDNN" in log for i in range(2)), log[-2000:]  # what answered


def test_probes_are_open_and_everything_else_needs_the_token(server):
    assert server.request("GET", "/healthz", token=False)[0] == 200
    status, _, body = server.request("GET", "/readyz", token=False)
    assert status == 200 and body["replicas_ready"] == 2
    for token in (False, "wrong"):
        status, headers, body = server.request("POST", "/v1/predict", {"inputs": [[[0.0] * 8] * 8]}, token=token)
        assert status == 401 and "Bearer" in body["error"] and headers.get("www-authenticate", headers.get("WWW-Authenticate")) == "Bearer"
        assert server.request("GET", "/metrics", token=token)[0] == 401
    status, headers, text = server.request("GET", "/metrics")
    assert status == 200 and 'shoal_requests_total{code="401",endpoint="/v1/predict"}' in text
    assert "shoal_replicas_ready 2.0" in text


SAMPLE = [[[0.5] * 8] * 8]  # one digits image, shape [1, 8, 8]
MALFORMED = [  # (method, path, raw body, content type, status, words in the message)
    ("POST", "/v1/predict", b"{not json", "application/json", 400, "malformed JSON"),
    ("POST", "/v1/predict", b"[1, 2]", "application/json", 400, "JSON object"),
    ("POST", "/v1/predict", b'{"inputs": [NaN]}', "application/json", 400, "NaN"),
    ("POST", "/v1/predict", b"{}", "application/json", 422, "missing field 'inputs'"),
    ("POST", "/v1/predict", b'{"inputs": 3}', "application/json", 422, "must be a list"),
    ("POST", "/v1/predict", b'{"inputs": []}', "application/json", 422, "empty"),
    ("POST", "/v1/predict", json.dumps({"inputs": [[1.0, 2.0]]}).encode(), "application/json", 422, "inputs[0] has shape [2]"),
    ("POST", "/v1/predict", json.dumps({"inputs": [[[[0.5] * 8] * 7 + [[0.5] * 7]]]}).encode(), "application/json", 422, "ragged"),
    ("POST", "/v1/predict", json.dumps({"inputs": [[[["a"] * 8] * 8]]}).encode(), "application/json", 422, "not a number"),
    ("POST", "/v1/predict", json.dumps({"inputs": [SAMPLE], "extra": 1}).encode(), "application/json", 422, "unknown field 'extra'"),
    ("POST", "/v1/predict", json.dumps({"inputs": [SAMPLE] * 17}).encode(), "application/json", 413, "limit of 16"),
    ("POST", "/v1/predict", b" " * 200001, "application/json", 413, "exceeds the limit"),
    ("POST", "/v1/predict", json.dumps({"inputs": [SAMPLE]}).encode(), "text/plain", 415, "application/json"),
    ("POST", "/v1/predict", json.dumps({"inputs": [{"p0": 1.0}]}).encode(), "application/json", 422, "not trained on a `shoal prep`"),
    ("GET", "/v1/predict", None, "application/json", 405, "Method Not Allowed"),
    ("POST", "/v1/nothing", b"{}", "application/json", 404, "Not Found"),
    ("POST", "/v1/generate", b'{"prompt": "hi"}', "application/json", 404, "only the gpt"),
]


@pytest.mark.parametrize("method,path,raw,content_type,status,words", MALFORMED, ids=[m[5][:20] for m in MALFORMED])
def test_malformed_requests_get_a_4xx_that_says_why(server, method, path, raw, content_type, status, words):
    got, _, body = server.request(method, path, raw=raw, content_type=content_type)
    assert got == status and words in body["error"], (got, body)


def test_the_service_still_answers_after_every_malformed_request(server):
    assert server.request("POST", "/v1/predict", {"inputs": [SAMPLE]})[0] == 200


def test_concurrent_requests_are_batched(server, digits):
    """10 at once (the queue holds 8, and the first request of each idle replica goes at once, alone): those that
    queue behind a busy replica share its next forward pass, each answered with its own rows."""
    answers = parallel(10, lambda i: server.request("POST", "/v1/predict", {"inputs": digits[i : i + 1].tolist()}))
    assert all(a[0] == 200 for a in answers), [a[0] for a in answers]
    assert [a[2]["predictions"][0] for a in answers] == [server.request("POST", "/v1/predict", {"inputs": digits[:10].tolist()})[2]["predictions"][i]
                                                        for i in range(10)]
    metrics = server.request("GET", "/metrics")[2]
    count = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("shoal_batch_samples_count")))
    total = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("shoal_batch_samples_sum")))
    assert total / count > 1  # some batches held several requests


def test_a_full_queue_answers_503_with_retry_after(server, digits):
    answers = parallel(40, lambda i: server.request("POST", "/v1/predict", {"inputs": digits[:8].tolist()}))
    codes = [a[0] for a in answers]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
    refused = next(a for a in answers if a[0] == 503)
    assert refused[1].get("Retry-After", refused[1].get("retry-after")) == "1" and "queue is full" in refused[2]["error"]


def test_a_replica_killed_under_load_loses_no_accepted_request(server, digits):
    """6 clients send 5 requests each (never more than the queue holds); replica 0 is SIGKILLed part way."""
    before = server.request("GET", "/v1/replicas")[2]["replicas"]
    started = threading.Event()

    def client(i):
        codes = []
        for j in range(5):
            codes.append(server.request("POST", "/v1/predict", {"inputs": digits[i + j : i + j + 2].tolist()})[0])
            started.set()
        return codes

    killer = threading.Thread(target=lambda: (started.wait(60), time.sleep(0.1), os.kill(before[0]["pid"], signal.SIGKILL)))
    killer.start()
    codes = parallel(6, client)
    killer.join()
    assert all(c == 200 for per_client in codes for c in per_client), codes
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        after = server.request("GET", "/v1/replicas")[2]["replicas"]
        if after[0]["restarts"] == 1 and after[0]["ready"]:
            break
        time.sleep(0.3)
    assert after[0]["restarts"] == 1 and after[0]["pid"] != before[0]["pid"] and after[1]["pid"] == before[1]["pid"]
    assert "shoal_replica_restarts_total 1.0" in server.request("GET", "/metrics")[2]
    assert server.request("POST", "/v1/predict", {"inputs": [SAMPLE]})[0] == 200


def test_sigterm_answers_what_was_accepted_and_exits_0(server, digits):
    """The module's last test: requests in flight when SIGTERM arrives are answered, then the process exits 0."""
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(server.request("POST", "/v1/predict", {"inputs": digits[:8].tolist()})))
               for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.05)  # let them be accepted (not timed: a request that arrives after the signal may be refused)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    assert server.proc.wait(60) == 0
    assert results and all(r[0] in (200, 503) for r in results) and any(r[0] == 200 for r in results)


@pytest.fixture(scope="module")
def gpt_server(runs):
    s = Server(runs["gpt"], "--replicas", "1")
    try:
        yield s.wait_ready()
    finally:
        s.stop(signal.SIGKILL)


def test_gpt_generation_equals_the_library_and_checks_its_fields(gpt_server, runs):
    request = {"prompt": "ROMEO:", "max_new_tokens": 10, "temperature": 0.7, "top_k": 5, "seed": 4}
    status, _, body = gpt_server.request("POST", "/v1/generate", request)
    assert status == 200, body
    source = resolve(runs["gpt"])
    expected = generate(build(source), encode("ROMEO:"), 10, source.spec.num_classes, 0.7, 5, 4)[0].tolist()
    assert body["tokens"] == expected and body["text"].startswith("ROMEO:")
    for bad, words in [({"prompt": "x", "tokens": [1]}, "exactly one"), ({"prompt": "x", "max_new_tokens": 0}, "outside"),
                       ({"tokens": [1, 10**6]}, "outside"), ({"prompt": "\u2603"}, "vocabulary"), ({"prompt": "x", "top_k": "5"}, "integer")]:
        status, _, body = gpt_server.request("POST", "/v1/generate", bad)
        assert status == 422 and words in body["error"], body
    status, _, body = gpt_server.request("POST", "/v1/predict", {"inputs": [[0.5] * 16]})
    assert status == 422 and "integer token ids" in body["error"]

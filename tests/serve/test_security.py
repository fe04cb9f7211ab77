"""Hostile and careless requests: each gets a clean 4xx with a one-line reason, never a 500.

No key, a wrong key, another tenant's model (the same 403 whether it exists or not), oversized
bodies (declared, streamed and decompressed), malformed tensors (shape, dtype and byte-count
mismatches, broken BYTES, bad JSON), and path tricks in model names.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import KEYS, make_repo

from ai_vmm.serve import create_app, hash_key

CONFIG = f"""
[server]
max_body_bytes = 65536

[[tenants]]
name = "alice"
key_sha256 = "{hash_key(KEYS["alice"])}"
models = ["cnn"]

[[tenants]]
name = "bob"
key_sha256 = "{hash_key(KEYS["bob"])}"
models = ["other"]
"""


def _json_infer(
    shape: list[int], data: Any, datatype: str = "FP32", name: str = "pixel_values"
) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


def _auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cnn_artifact: Path) -> Any:
    from conftest import LiveServer

    repo = make_repo(tmp_path_factory.mktemp("sec") / "repo", {"cnn": cnn_artifact}, CONFIG)
    with LiveServer(create_app(repo)) as live:
        yield live


def _check(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    assert words in message, message
    assert "\n" not in message
    assert response.headers["x-request-id"]


def test_keys_and_allow_lists(server: Any) -> None:
    url = f"{server.url}/v2/models/cnn/infer"
    ok = _json_infer([1, 3, 32, 32], [0.0] * 3072)
    _check(httpx.post(url, json=ok), 401, "no API key")
    _check(httpx.post(url, json=ok, headers={"Authorization": "Bearer sk-wrong"}), 401, "not valid")
    _check(httpx.post(url, json=ok, headers={"Authorization": "Basic abc"}), 401, "no API key")
    assert httpx.post(url, json=ok, headers=_auth("alice")).status_code == 200
    assert httpx.post(url, json=ok, headers={"api-key": KEYS["alice"]}).status_code == 200
    # bob may not use cnn; a model that does not exist gets the very same answer.
    denied = httpx.post(url, json=ok, headers=_auth("bob"))
    missing = httpx.post(f"{server.url}/v2/models/secret/infer", json=ok, headers=_auth("bob"))
    _check(denied, 403, "may not use model 'cnn'")
    _check(missing, 403, "may not use model 'secret'")
    assert denied.json()["error"].replace("cnn", "X") == missing.json()["error"].replace(
        "secret", "X"
    )
    # ... and learns nothing from metadata, readiness or the index either.
    assert httpx.get(f"{server.url}/v2/models/cnn", headers=_auth("bob")).status_code == 403
    assert httpx.get(f"{server.url}/v2/models/cnn/ready", headers=_auth("bob")).status_code == 403
    index = httpx.post(f"{server.url}/v2/repository/index", headers=_auth("bob"))
    assert index.status_code == 200 and index.json() == []
    # Admin endpoints need an admin key.
    load = httpx.post(f"{server.url}/v2/repository/models/cnn/unload", headers=_auth("alice"))
    _check(load, 403, "admin")
    # Health stays public (probes carry no keys).
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


def test_oversized_bodies(server: Any) -> None:
    url = f"{server.url}/v2/models/cnn/infer"
    big = b"{" + b" " * 70000 + b"}"
    _check(httpx.post(url, content=big, headers=_auth("alice")), 413, "larger than")

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming
        for _ in range(20):
            yield b" " * 8192

    _check(httpx.post(url, content=chunks(), headers=_auth("alice")), 413, "larger than")
    bomb = gzip.compress(b" " * 10_000_000)
    assert len(bomb) < 65536
    headers = {**_auth("alice"), "Content-Encoding": "gzip"}
    _check(httpx.post(url, content=bomb, headers=headers), 413, "larger than")
    headers = {**_auth("alice"), "Content-Encoding": "br"}
    _check(httpx.post(url, content=b"{}", headers=headers), 415, "not supported")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (_json_infer([1, 3, 32, 31], [0.0] * 2976), "axis 3 must be 32"),
        (_json_infer([1, 3, 32], [0.0] * 96), "rank 3"),
        (_json_infer([1, 3, 32, 32], [0.0] * 10), "has 10 values"),
        (_json_infer([1, 3, 32, 32], [0] * 3072, "INT64"), "expects FP32"),
        (_json_infer([1, 3, 32, 32], ["a"] * 3072), "must be numbers"),
        (_json_infer([1, 3, 32, 32], [0.0] * 3072, name="x"), "unknown input 'x'"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [{"name": "pixel_values"}]}, "expects FP32"),
        (_json_infer([-1, 3, 32, 32], []), "sizes >= 0"),
        (_json_infer([0, 3, 32, 32], []), "batch is empty"),
        (
            {**_json_infer([1, 3, 32, 32], [0.0] * 3072), "outputs": [{"name": "nope"}]},
            "unknown output",
        ),
        (
            {**_json_infer([1, 3, 32, 32], [0.0] * 3072), "parameters": {"timeout": "soon"}},
            "microseconds",
        ),
        ([1, 2, 3], "JSON object"),
    ],
)
def test_malformed_json_tensors(server: Any, body: Any, words: str) -> None:
    response = httpx.post(f"{server.url}/v2/models/cnn/infer", json=body, headers=_auth("alice"))
    _check(response, 400, words)


@pytest.mark.parametrize(
    ("size", "payload_bytes", "words"),
    [
        (3072 * 4 - 4, 3072 * 4 - 4, "needs 12288"),  # byte count does not match shape
        (3072 * 4, 3072 * 4 - 1, "only 12287 remain"),  # body shorter than announced
        (3072 * 4, 3072 * 4 + 8, "announce 12288"),  # trailing bytes nobody announced
    ],
)
def test_malformed_binary_tensors(server: Any, size: int, payload_bytes: int, words: str) -> None:
    header = {
        "inputs": [
            {"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
             "parameters": {"binary_data_size": size}}
        ]
    }  # fmt: skip
    head = json.dumps(header).encode()
    body = head + np.zeros(payload_bytes, np.uint8).tobytes()
    headers = {**_auth("alice"), "Inference-Header-Content-Length": str(len(head))}
    response = httpx.post(f"{server.url}/v2/models/cnn/infer", content=body, headers=headers)
    _check(response, 400, words)
    headers["Inference-Header-Content-Length"] = str(len(body) + 5)
    response = httpx.post(f"{server.url}/v2/models/cnn/infer", content=body, headers=headers)
    _check(response, 400, "Inference-Header-Content-Length")


def test_bad_json_and_deadline_headers(server: Any) -> None:
    url = f"{server.url}/v2/models/cnn/infer"
    _check(httpx.post(url, content=b"{not json", headers=_auth("alice")), 400, "not valid JSON")
    ok = _json_infer([1, 3, 32, 32], [0.0] * 3072)
    headers = {**_auth("alice"), "X-Request-Timeout-Ms": "soon"}
    _check(httpx.post(url, json=ok, headers=headers), 400, "milliseconds")
    headers["X-Request-Timeout-Ms"] = "-5"
    _check(httpx.post(url, json=ok, headers=headers), 400, "positive")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
        "/v2/models/%2E%2E/infer",
        "/v2/models/.hidden/infer",
        "/v2/models/cnn%00/infer",
        "/v2/models/a%5Cb/infer",
        "/v2/models/" + "a" * 300 + "/infer",
        "/v2/models/cnn/versions/..%2F1/infer",
    ],
)
def test_path_tricks_in_model_names(server: Any, path: str) -> None:
    ok = _json_infer([1, 3, 32, 32], [0.0] * 3072)
    response = httpx.post(server.url + path, json=ok, headers=_auth("alice"))
    assert 400 <= response.status_code < 500, (path, response.status_code)
    assert "error" in response.json()


def test_unknown_routes_and_methods(server: Any) -> None:
    assert httpx.get(f"{server.url}/nothing").status_code == 404
    assert httpx.get(f"{server.url}/v2/models/cnn/infer", headers=_auth("alice")).status_code == 405

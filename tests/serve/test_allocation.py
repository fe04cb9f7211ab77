"""Resource allocation: memory budgets, LRU eviction, pinned and lazy models, failed loads.

Two real compiled models (the tiny CNN and a small MLP) under a CPU budget that holds either
but not both; a third entry is a broken model file. Everything is observed over HTTP: the
repository index, the admin endpoint, the metrics, and tritonclient's load/unload calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from conftest import KEYS, LiveServer, compile_artifact, make_repo
from tritonclient.utils import InferenceServerException

from ai_vmm.serve import create_app, hash_key
from ai_vmm.serve.backend import load_model
from tests_support import make_mlp_model


@pytest.fixture(scope="module")
def mlp_artifact(artifacts: Path) -> Path:
    source = artifacts / "mlp.onnx"
    onnx.save(make_mlp_model(), source)
    return compile_artifact(source, artifacts / "mlp.vmm")


def _size(artifact: Path) -> int:
    model = load_model(artifact, kind="model")
    try:
        return sum(model.memory.values())
    finally:
        model.close()


def _config(budget: int, pinned: bool) -> str:
    return f"""
[server]
admission_quantile = 0.93

[resources.budgets]
CPU = {budget}

[models.cnn]
pinned = {"true" if pinned else "false"}

[models.mlp]
load = "lazy"

[[tenants]]
name = "ops"
key_sha256 = "{hash_key(KEYS["root"])}"
admin = true
"""


def _index(url: str) -> dict[str, str]:
    rows = httpx.post(f"{url}/v2/repository/index", headers=_admin()).json()
    return {row["name"]: row["state"] for row in rows}


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS['root']}"}


def _infer(url: str, model: str, inputs: dict[str, Any]) -> httpx.Response:
    body = {
        "inputs": [
            {"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()}
            for k, v in inputs.items()
        ]
    }
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, headers=_admin(), timeout=60)


CNN_IN = {"pixel_values": np.zeros((1, 3, 32, 32), np.float32)}
MLP_IN = {"x": np.ones((2, 16), np.float32)}


def test_lru_eviction_lazy_loading_and_a_failed_model(
    tmp_path: Path, cnn_artifact: Path, mlp_artifact: Path
) -> None:
    budget = _size(cnn_artifact) + _size(mlp_artifact) - 1
    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact, "mlp": mlp_artifact})
    (repo / "broken.onnx").write_bytes(b"this is not a model")
    (repo / "serve.toml").write_text(_config(budget, pinned=False))
    with LiveServer(create_app(repo)) as server:
        url = server.url
        # The broken model is not ready; the server is, and serves the others.
        assert _index(url) == {"broken": "FAILED", "cnn": "READY", "mlp": "UNLOADED"}
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        response = _infer(url, "broken", {"x": np.zeros((1, 1), np.float32)})
        assert response.status_code == 503 and "not ready" in response.json()["error"]
        assert "Retry-After" in response.headers
        assert _infer(url, "cnn", CNN_IN).status_code == 200
        # The server's admission quantile reached the model's batcher (serve.toml above).
        batcher = server.app.state.vmm.manager.find("cnn").batcher
        assert batcher is not None and batcher.service.quantile == 0.93
        # The lazy MLP loads on its first request; the budget forces the idle CNN out (LRU).
        response = _infer(url, "mlp", MLP_IN)
        assert response.status_code == 200, response.text
        assert _index(url) == {"broken": "FAILED", "cnn": "UNLOADED", "mlp": "READY"}
        allocation = httpx.get(f"{url}/admin/allocation", headers=_admin()).json()
        assert allocation["evictions"] == 1
        device = next(iter(allocation["devices"]))
        assert allocation["devices"][device]["budget"] == budget
        assert allocation["devices"][device]["charged"] == _size(mlp_artifact)
        # An evicted model loads again on demand (and evicts the other in turn).
        assert _infer(url, "cnn", CNN_IN).status_code == 200
        assert _index(url)["mlp"] == "UNLOADED"
        metrics = httpx.get(f"{url}/metrics").text
        assert "vmm_model_evictions_total 2.0" in metrics
        assert 'vmm_model_ready{model="cnn",state="READY",version="1"} 1.0' in metrics
        assert f'vmm_device_memory_budget_bytes{{device="{device}"}} {float(budget)}' in metrics


def test_pinned_model_is_never_evicted(
    tmp_path: Path, cnn_artifact: Path, mlp_artifact: Path
) -> None:
    budget = _size(cnn_artifact) + _size(mlp_artifact) - 1
    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact, "mlp": mlp_artifact})
    (repo / "serve.toml").write_text(_config(budget, pinned=True))
    with LiveServer(create_app(repo)) as server:
        response = _infer(server.url, "mlp", MLP_IN)
        assert response.status_code == 503
        assert "budget" in response.json()["error"]
        assert _index(server.url) == {"cnn": "READY", "mlp": "FAILED"}
        # tritonclient's repository calls: unload the pinned model by hand, then load the MLP.
        client = triton.InferenceServerClient(server.host_port)
        client.unload_model("cnn", headers=_admin())
        client.load_model("mlp", headers=_admin())
        assert client.is_model_ready("mlp", headers=_admin())
        assert not client.is_model_ready("cnn", headers=_admin())
        with pytest.raises(InferenceServerException, match="401"):
            client.unload_model("mlp")  # no key: repository calls need an admin key

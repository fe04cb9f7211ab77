"""Serving a model deployed over several devices: ``placement.replicas = "auto"`` / device keys.

The repository's config asks for replicas across devices; deploy measures the set (on
synthetic samples: a server has none) and keeps it or its best device; every kept replica
becomes a worker on the model's queue, and the repository index and the admin endpoint show
where each runs. Real compiles and runs on openvino:CPU + onnxruntime:CPU; ``MARGIN`` is moved
to make prune keep the set for sure (no timing is asserted).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import ai_vmm
from ai_vmm import VMM
from ai_vmm.deploy import replicas as deploy_replicas
from ai_vmm.serve import create_app
from ai_vmm.serve.config import ServeConfigError, validate_model_config

REPO = Path(__file__).resolve().parents[2]
CNN = REPO / "models" / "bundled" / "tiny_cnn.onnx"
DEVICES = ["openvino:CPU", "onnxruntime:CPU"]


def test_placement_replicas_across_devices_in_the_config() -> None:
    auto = validate_model_config({"placement": {"replicas": "auto"}}, "m")
    assert auto.deploy_constraints() == {"replicas": "auto"} and auto.placement.copies == 1
    listed = validate_model_config(
        {"placement": {"replicas": DEVICES}, "constraints": {"max_latency_ms": 50}}, "m"
    )
    assert listed.deploy_constraints() == {"max_latency_ms": 50, "replicas": DEVICES}
    copies = validate_model_config({"placement": {"replicas": 3}}, "m")
    assert copies.deploy_constraints() == {} and copies.placement.copies == 3
    for bad, match in (
        ({"placement": {"replicas": "all"}}, 'a number, "auto" or device keys'),
        ({"placement": {"replicas": ["CPU"]}}, "device keys"),
        ({"placement": {"replicas": "auto", "devices": ["INTEL_CPU"]}}, "leave devices empty"),
        ({"placement": {"replicas": "auto"}, "constraints": {"replicas": 2}}, "set twice"),
    ):
        with pytest.raises(ServeConfigError, match=match):
            validate_model_config(bad, "m")


def _repo(root: Path, replicas: str) -> Path:
    root.mkdir()
    shutil.copy(CNN, root / "cnn.onnx")
    (root / "serve.toml").write_text(f"[models.cnn]\nplacement = {{ replicas = {replicas} }}\n")
    return root


def _infer(url: str, x: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {
                "name": "pixel_values",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    reply = httpx.post(f"{url}/v2/models/cnn/infer", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    out = reply.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def _reference(tmp_path: Path) -> Any:
    path = ai_vmm.compile(CNN, "onnxruntime:CPU", tmp_path / "single.vmm", tune=False).path
    return ai_vmm.runtime.load(path)


def test_a_kept_set_serves_from_every_device_and_shows_where(
    tmp_path: Path, live: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino")
    monkeypatch.setattr(deploy_replicas, "MARGIN", -1.0)  # any set beats its best device
    repo = _repo(tmp_path / "repo", '["openvino:CPU", "onnxruntime:CPU"]')
    vmm = VMM(store=tmp_path / "store", measure_seconds=0.1)
    rng = np.random.default_rng(2)
    feeds = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(24)]
    with live(create_app(repo, vmm=vmm)) as server, _reference(tmp_path) as single:
        [row] = httpx.get(f"{server.url}/v2/repository/index").json()
        assert row["state"] == "READY", row
        assert sorted(row["devices"]) == sorted(DEVICES) and row["replicas"] == 2
        assert set(row["memory"]) == set(DEVICES)
        decision = row["replica_set"]
        assert sorted(decision["kept"]) == sorted(DEVICES) and decision["pruned"] == []
        assert decision["asked"] == DEVICES and "every replica kept" in decision["why"]
        with ThreadPoolExecutor(4) as pool:
            outputs = list(pool.map(lambda x: _infer(server.url, x), feeds))
        for x, got in zip(feeds, outputs, strict=True):
            want = single.run({"pixel_values": x})["logits"]
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        allocation = httpx.get(f"{server.url}/admin/allocation").json()
        [model] = allocation["models"]
        served = {r["name"]: r["completed"] for r in model["replica_set"]["replicas"]}
        assert sum(served.values()) >= len(feeds)
        assert set(allocation["devices"]) >= set(DEVICES)


def test_auto_replicas_show_what_deploy_kept(tmp_path: Path, live: Any) -> None:
    pytest.importorskip("openvino")
    repo = _repo(tmp_path / "repo", '"auto"')
    vmm = VMM(store=tmp_path / "store", measure_seconds=0.1)
    with live(create_app(repo, vmm=vmm)) as server:
        [row] = httpx.get(f"{server.url}/v2/repository/index").json()
        assert row["state"] == "READY", row
        decision = row["replica_set"]
        assert decision["asked"] == "auto"
        # Where it runs is what prune kept: the set, or its best device alone.
        assert sorted(row["devices"]) == sorted(decision["kept"])
        assert len(decision["kept"]) + len(decision["pruned"]) == 2
        x = np.zeros((1, 3, 32, 32), np.float32)
        assert _infer(server.url, x).shape == (1, 10)

"""Monitoring: Prometheus metrics per tenant and model, structured access logs, request ids."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from conftest import KEYS, make_repo
from prometheus_client.parser import text_string_to_metric_families

from ai_vmm.serve import create_app, hash_key


def test_metrics_access_log_and_request_ids(
    tmp_path: Path, cnn_artifact: Path, live: type, caplog: pytest.LogCaptureFixture
) -> None:
    config = (
        f'[[tenants]]\nname = "alice"\nkey_sha256 = "{hash_key(KEYS["alice"])}"\n'
        "[models.cnn]\nbatching = { max_batch = 4, max_queue_delay_ms = 1 }\n"
    )
    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact}, config)
    body = {"inputs": [{"name": "pixel_values", "shape": [2, 3, 32, 32], "datatype": "FP32",
                        "data": [0.5] * 6144}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {KEYS['alice']}", "X-Request-Id": "trace-42"}
    caplog.set_level(logging.INFO, logger="ai_vmm.serve.access")
    with live(create_app(repo)) as server:
        url = f"{server.url}/v2/models/cnn/infer"
        ok = httpx.post(url, json=body, headers=headers)
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-42"
        assert (
            "app;dur=" in ok.headers["server-timing"]
            and "queue;dur=" in ok.headers["server-timing"]
        )
        bad = httpx.post(url, json={"inputs": []}, headers=headers)
        assert bad.status_code == 400
        generated = httpx.post(url, json=body, headers={"X-Request-Id": "bad id with spaces"})
        assert generated.status_code == 401 and len(generated.headers["x-request-id"]) == 32
        text = httpx.get(f"{server.url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    who = (("model", "cnn"), ("tenant", "alice"))
    assert (
        samples[
            ("vmm_requests_total", (*who[:1], ("protocol", "kserve"), ("status", "200"), who[1]))
        ]
        == 1
    )
    assert samples[("vmm_request_failures_total", (who[0], ("reason", "bad_request"), who[1]))] == 1
    assert samples[("vmm_request_latency_seconds_count", who)] == 1
    assert samples[("vmm_queue_time_seconds_count", who)] == 1
    assert samples[("vmm_batch_size_count", (("model", "cnn"),))] == 1
    assert samples[("vmm_batch_size_sum", (("model", "cnn"),))] == 2
    assert (
        samples[("vmm_model_ready", (("model", "cnn"), ("state", "READY"), ("version", "1")))] == 1
    )
    assert any(
        name == "vmm_model_memory_bytes" and value > 0 for (name, _), value in samples.items()
    )
    assert ("vmm_process_resident_bytes", ()) in samples  # host figures, measured at scrape
    assert ("vmm_cpu_utilization_ratio", ()) in samples
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ai_vmm.serve.access"]
    first = next(
        line for line in lines if line["request_id"] == "trace-42" and line["status"] == 200
    )
    assert first["tenant"] == "alice" and first["model"] == "cnn" and first["batch"] == 2
    assert first["path"] == "/v2/models/cnn/infer" and first["ms"] > 0
    refused = next(line for line in lines if line["status"] == 400)
    assert refused["reason"] == "bad_request"


def test_device_power_and_energy_where_measurable(tmp_path: Path) -> None:
    """RAPL and NVML through deploy's telemetry; both stand-ins (a container has no RAPL, this
    machine no NVIDIA GPU): deploy's test fakes, which mimic the real interfaces."""
    import sys

    from prometheus_client import CollectorRegistry, generate_latest

    from ai_vmm.deploy.telemetry import Telemetry
    from ai_vmm.serve.metrics import HostCollector

    sys.path.insert(0, str(Path(__file__).parents[1] / "deploy"))
    from deploy_fakes import FakeNvml, rapl_tree, set_energy

    powercap = rapl_tree(tmp_path / "powercap", {0: (5_000_000, 2**32), 1: (2_500_000, 2**32)})
    telemetry = Telemetry.discover(rapl_root=powercap, nvml=FakeNvml(("NVIDIA H200",) * 2))
    set_energy(powercap, 0, 6_000_000)  # package 0 used 1 J since discovery
    set_energy(powercap, 1, 3_000_000)  # package 1 used 0.5 J
    registry = CollectorRegistry()
    registry.register(HostCollector(telemetry))
    values = {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert values[("vmm_cpu_energy_joules_total", ())] == 1.5  # packages, not core sub-domains
    assert values[("vmm_gpu_power_watts", ("1",))] == 300.0
    assert values[("vmm_gpu_memory_used_bytes", ("0",))] == 1 << 30
    assert values[("vmm_gpu_energy_joules_total", ("0",))] == 1000.0

"""A deployment that keeps violating its latency constraint says so; stats() states."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ai_vmm import Constraints, InputError
from ai_vmm.deploy.deployment import CHECK_EVERY, SUSTAINED, WINDOW, Deployment, LatencyMonitor


class _Slow:
    """A runtime object whose call time the test sets (sleeps: real wall-clock latency)."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.closed = False
        self.inputs = ()
        self.outputs = ()

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        time.sleep(self.delay_s)
        return {"y": np.zeros(1)}

    def close(self) -> None:
        self.closed = True


def _deployment(model: _Slow, limits: Constraints) -> Deployment:
    record = {
        "model": {"label": "slow"},
        "chosen": {
            "key": "x",
            "figures": {"latency_ms": {"p95": 1.0}, "memory_mb": 90.0, "power": {"watts": 9.5}},
        },
    }
    return Deployment(model, artifact_path=Path("x.vmm"), explanation=record, constraints=limits)


def test_sustained_violation_logs_and_flags(caplog: pytest.LogCaptureFixture) -> None:
    model = _Slow()
    # A limit far above an instant call: a loaded machine's scheduling stalls stay under it.
    deployment = _deployment(model, Constraints(max_latency_ms=20.0))
    for _ in range(WINDOW):
        deployment.run({})
    assert not deployment.stats()["latency_violation"]
    model.delay_s = 0.03  # over the limit, call after call
    caplog.set_level(logging.WARNING, logger="ai_vmm.deploy")
    for _ in range(WINDOW + CHECK_EVERY * SUSTAINED):
        deployment.run({})
    stats = deployment.stats()
    assert stats["latency_violation"] is True
    assert stats["constraints"]["max_latency_ms"]["state"] == "violated"
    assert stats["at_risk"] == ["max_latency_ms"]
    assert any("over max_latency_ms 20" in r.getMessage() for r in caplog.records)
    model.delay_s = 0.0
    for _ in range(WINDOW + CHECK_EVERY * SUSTAINED):
        deployment.run({})
    assert not deployment.stats()["latency_violation"]
    deployment.close()
    assert model.closed


def test_one_slow_call_is_not_a_violation() -> None:
    monitor = LatencyMonitor(2.0, 95.0, "m")
    for index in range(WINDOW * 3):
        monitor.record(0.0, 0.05 if index == WINDOW else 0.0005)
    assert not monitor.violating


def test_states_and_at_risk() -> None:
    limits = Constraints(max_memory_mb=95, power_budget_watts=20, min_throughput=10)
    deployment = _deployment(_Slow(), limits)
    deployment.run({})
    stats = deployment.stats()
    assert stats["constraints"]["max_memory_mb"]["state"] == "at risk"  # 90 of 95 MB
    assert stats["constraints"]["power_budget_watts"]["state"] == "ok"
    assert stats["constraints"]["min_throughput"]["state"] == "ok"
    assert stats["at_risk"] == ["max_memory_mb"]
    assert stats["calls"] == 1 and stats["errors"] == 0


def test_generate_on_a_tensor_model_is_refused() -> None:
    deployment = _deployment(_Slow(), Constraints())
    with pytest.raises(InputError, match="not a causal language model"):
        deployment.generate("hello")

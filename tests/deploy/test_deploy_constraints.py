"""Constraints: the typed object, its dict and KEY=VALUE forms, and one-line errors."""

from __future__ import annotations

import pytest

from ai_vmm import ConstraintError, Constraints


def test_dict_form_and_object_form_are_the_same() -> None:
    data = {
        "max_latency_ms": 20,
        "min_throughput": 200,
        "power_budget_watts": 150,
        "max_memory_mb": 2048,
        "preferred_hardware": ["NVIDIA_GPU", "intel_npu", "INTEL_CPU"],
        "max_accuracy_drop": {"cosine": 0.01},
    }
    parsed = Constraints.parse(data)
    assert parsed == Constraints(**data)
    assert parsed.preferred_hardware == ("NVIDIA_GPU", "INTEL_NPU", "INTEL_CPU")
    assert parsed.max_latency_ms == 20.0 and parsed.latency_percentile == 95.0
    assert parsed.permits_low_precision
    assert parsed.objective == "cost"
    assert Constraints.parse(parsed) is parsed
    assert Constraints.parse(None) == Constraints()


def test_command_line_pairs() -> None:
    parsed = Constraints.parse(
        [
            "max_latency_ms=20",
            "latency_percentile=99",
            "preferred_hardware=NVIDIA_GPU,CPU",
            "max_accuracy_drop=cosine=0.02",
            "max_accuracy_drop=top1:1",
            "max_batch=8",
        ]
    )
    assert parsed.max_latency_ms == 20.0 and parsed.latency_percentile == 99.0
    assert parsed.preferred_hardware == ("NVIDIA_GPU", "CPU")
    assert dict(parsed.max_accuracy_drop) == {"cosine": 0.02, "top1": 1.0}
    assert parsed.max_batch == 8


def test_objective_defaults() -> None:
    assert Constraints().objective == "latency"
    assert Constraints(max_memory_mb=100).objective == "latency"
    assert Constraints(power_budget_watts=10).objective == "cost"
    assert Constraints(max_latency_ms=5, optimize="throughput").objective == "throughput"
    assert not Constraints().permits_low_precision


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_latency_ms": -1}, "max_latency_ms must be positive"),
        ({"max_latency_ms": "fast"}, "must be a number"),
        ({"min_throughput": float("nan")}, "must be finite"),
        ({"latency_percentile": 0}, "latency_percentile must be in (0, 100]"),
        ({"max_latency": 20}, "unknown constraint 'max_latency'"),
        ({"preferred_hardware": ["TPU"]}, "unknown hardware 'TPU'"),
        ({"max_accuracy_drop": {"bleu": 1}}, "unknown metric 'bleu'"),
        ({"max_accuracy_drop": {"cosine": -0.1}}, "must be >= 0"),
        ({"max_accuracy_drop": 0.01}, "must be a dict"),
        ({"max_batch": 0}, "max_batch must be an integer in 1..256"),
        ({"optimize": "speed"}, "optimize must be one of"),
    ],
)
def test_bad_constraints_are_one_line_errors(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConstraintError) as info:
        Constraints.parse(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 8


def test_bad_pair() -> None:
    with pytest.raises(ConstraintError, match="expected KEY=VALUE"):
        Constraints.parse(["max_latency_ms"])


def test_describe_and_json() -> None:
    limits = Constraints(
        max_latency_ms=20, max_accuracy_drop={"cosine": 0.01}, preferred_hardware=["CPU"]
    )
    assert limits.describe() == "p95 latency <= 20 ms; cosine drop <= 0.01; prefer CPU"
    data = limits.to_json()
    assert data["max_latency_ms"] == 20.0 and data["preferred_hardware"] == ["CPU"]
    assert Constraints.parse(data) == limits

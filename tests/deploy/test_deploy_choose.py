"""Choosing among measured candidates (figures made up here: the rules, not the measuring)."""

from __future__ import annotations

import pytest

from ai_vmm import ConstraintError, Constraints
from ai_vmm.deploy.builds import Build, BuildSpec
from ai_vmm.deploy.choose import Variant, choose
from ai_vmm.deploy.measure import Figures
from ai_vmm.deploy.telemetry import PowerFigure
from ai_vmm.runtime.devices import Device

CPU = Device("openvino", "CPU", "cpu")
ORT = Device("onnxruntime", "CPU", "cpu")
GPU = Device("cuda", "0", "gpu")


def _variant(
    device: Device,
    precision: str,
    latency_ms: float,
    *,
    threads: int | None = 2,
    batch: int = 1,
    watts: float = 10.0,
    measured: bool = False,
    cosine_drop: float = 0.0,
    memory_mb: float = 50.0,
) -> Variant:
    hardware = "NVIDIA_GPU" if device.kind == "gpu" else "AMD_CPU"
    build = Build(BuildSpec(device, hardware, precision), status="built")
    build.accuracy = {"metrics": {}, "drops": {"cosine": cosine_drop}}
    power = PowerFigure(watts, watts, 1.0, measured, "test")
    figures = Figures([latency_ms] * 20, batch, memory_mb, power)
    return Variant(build, threads if device.kind == "cpu" else None, batch, None, figures)


def test_cheapest_that_meets_every_constraint() -> None:
    fast_hungry = _variant(CPU, "fp32", 5.0, threads=2, watts=12.0)  # 60 mJ
    slow_frugal = _variant(CPU, "fp32", 8.0, threads=1, watts=6.0)  # 48 mJ
    too_slow = _variant(ORT, "fp32", 30.0, threads=1, watts=1.0)  # 30 mJ, fails
    limits = Constraints(max_latency_ms=10)
    chosen, rule, meets = choose(
        [fast_hungry, slow_frugal, too_slow], limits, "AMD_CPU", strict=True
    )
    assert chosen is slow_frugal and meets
    assert "least energy per inference" in rule
    assert too_slow.status == "fails" and fast_hungry.status == "meets"
    assert too_slow.failed[0].text == "p95 latency 30.00 ms > 10 ms"


def test_without_performance_limits_the_fastest_wins() -> None:
    fast = _variant(CPU, "fp32", 5.0, threads=2)
    slow = _variant(CPU, "fp32", 8.0, threads=1)
    chosen, rule, _ = choose([slow, fast], Constraints(), "AMD_CPU", strict=True)
    assert chosen is fast and "lowest p95 latency" in rule


def test_near_ties_go_to_the_higher_precision_then_fewer_threads() -> None:
    fp32 = _variant(CPU, "fp32", 10.0, threads=2)
    int8 = _variant(CPU, "int8", 9.8, threads=2, cosine_drop=0.002)
    limits = Constraints(max_latency_ms=20, max_accuracy_drop={"cosine": 0.01})
    chosen, rule, _ = choose([int8, fp32], limits, "AMD_CPU", strict=True)
    assert chosen is fp32 and "within 5%" in rule
    much_faster = _variant(CPU, "int8", 6.0, threads=2, cosine_drop=0.002)
    chosen, _, _ = choose([fp32, much_faster], limits, "AMD_CPU", strict=True)
    assert chosen is much_faster


def test_accuracy_budget_rules_out_low_precision() -> None:
    fp32 = _variant(CPU, "fp32", 12.0)
    int8 = _variant(CPU, "int8", 6.0, cosine_drop=0.03)
    limits = Constraints(max_latency_ms=20, max_accuracy_drop={"cosine": 0.01})
    chosen, _, _ = choose([fp32, int8], limits, "AMD_CPU", strict=True)
    assert chosen is fp32
    assert int8.failed[0].text == "cosine drop 0.03 > 0.01"


def test_preferred_hardware_comes_first_and_falls_back() -> None:
    gpu = _variant(GPU, "fp32", 2.0, watts=300.0, measured=True)
    cpu = _variant(CPU, "fp32", 8.0, watts=12.0)
    prefer_gpu = Constraints(max_latency_ms=10, preferred_hardware=["NVIDIA_GPU", "CPU"])
    chosen, _, _ = choose([cpu, gpu], prefer_gpu, "AMD_CPU", strict=True)
    assert chosen is gpu  # preferred, although the CPU spends less energy per inference
    budget = Constraints(
        max_latency_ms=10, power_budget_watts=150, preferred_hardware=["NVIDIA_GPU", "CPU"]
    )
    chosen, _, _ = choose([cpu, gpu], budget, "AMD_CPU", strict=True)
    assert chosen is cpu
    assert gpu.failed[0].text == "power 300.0 W > 150 W"
    assert cpu.checks[1].text == "power (estimated) 12.00 W <= 150 W"


def test_nothing_meets_names_the_best_achievable_figures() -> None:
    fp32 = _variant(CPU, "fp32", 25.0, memory_mb=40.0)
    int8 = _variant(CPU, "int8", 15.0, cosine_drop=0.05, memory_mb=20.0)
    limits = Constraints(max_latency_ms=10, max_accuracy_drop={"cosine": 0.01})
    with pytest.raises(ConstraintError) as info:
        choose([fp32, int8], limits, "AMD_CPU", strict=True)
    message = str(info.value)
    # Latency: the best among candidates within the accuracy budget (fp32), not int8's 15 ms.
    assert "best p95 latency 25.00 ms > 10 ms (openvino:CPU fp32, 2 threads, batch 1)" in message
    # Accuracy: fp32 holds it, but nothing that meets the latency limit does.
    assert (
        "best cosine drop 0.0 <= 0.01 (openvino:CPU fp32, 2 threads, batch 1) "
        "(no candidate meets the other constraints either)"
    ) in message
    assert "\n" not in message


def test_strict_false_returns_the_closest() -> None:
    near = _variant(CPU, "fp32", 11.0)
    far = _variant(ORT, "fp32", 40.0)
    chosen, rule, meets = choose(
        [far, near], Constraints(max_latency_ms=10), "AMD_CPU", strict=False
    )
    assert chosen is near and not meets and rule.startswith("closest to the constraints")
    assert near.status == "chosen" and far.status == "fails"


def test_throughput_objective_and_batches() -> None:
    single = _variant(GPU, "fp16", 1.0, batch=1)
    batched = _variant(GPU, "fp16", 4.0, batch=16)
    limits = Constraints(min_throughput=1000, optimize="throughput")
    chosen, _, _ = choose([single, batched], limits, "AMD_CPU", strict=True)
    assert chosen is batched and batched.figures is not None
    assert batched.figures.throughput == pytest.approx(4000.0)


def test_nothing_measured_is_an_error() -> None:
    broken = _variant(CPU, "fp32", 1.0)
    broken.figures, broken.error = None, "DeviceError: gone"
    with pytest.raises(ConstraintError, match="could be measured"):
        choose([broken], Constraints(), "AMD_CPU", strict=True)

"""Prometheus metrics of one server (its own registry, so several apps can share a process).

Per tenant and model: requests by status, failures by reason, latency and queue-time
histograms, tokens, time to first token and time per output token. Per model: batch sizes,
inference time, queue depth, readiness, replicas and memory per device. Per device: the
memory budget and what is charged to it. The host, measured at scrape time: CPU utilisation,
host and process memory, and where readable, CPU package energy (RAPL) and NVIDIA GPU
utilisation, memory and power (NVML).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Every metric the server exports, in one registry."""

    def __init__(
        self, allocation: Callable[[], dict[str, Any]] | None = None, telemetry: Any = None
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vmm_requests",
            "Requests answered, by status code.",
            ["model", "tenant", "protocol", "status"],
            registry=r,
        )
        self.failures = Counter(
            "vmm_request_failures",
            "Requests not served, by reason (rejections included).",
            ["model", "tenant", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "vmm_request_latency_seconds",
            "Time from arrival to the last byte of the answer.",
            ["model", "tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "vmm_queue_time_seconds",
            "Time a request waited before its batch started.",
            ["model", "tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vmm_batch_size",
            "Rows per model call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "vmm_inference_seconds",
            "Time of one model call (one batch).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "vmm_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            ["model", "tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "vmm_time_per_output_token_seconds",
            "Mean time per generated token after the first.",
            ["model", "tenant"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "vmm_tokens",
            "LM tokens, by kind (prompt or completion).",
            ["model", "tenant", "kind"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "vmm_queue_depth",
            "Requests waiting, by priority class.",
            ["model", "class"],
            registry=r,
        )
        self.active_sequences = Gauge(
            "vmm_active_sequences", "LM sequences being decoded together.", ["model"], registry=r
        )
        if allocation is not None:
            r.register(_AllocationCollector(allocation))
        r.register(HostCollector(telemetry))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AllocationCollector(Collector):
    """Readiness, replicas and memory of every model, and device budgets, at scrape time."""

    def __init__(self, allocation: Callable[[], dict[str, Any]]) -> None:
        self._allocation = allocation

    def collect(self) -> Iterator[Any]:
        snapshot = self._allocation()
        ready = GaugeMetricFamily(
            "vmm_model_ready",
            "1 when the model answers requests.",
            labels=["model", "version", "state"],
        )
        memory = GaugeMetricFamily(
            "vmm_model_memory_bytes",
            "Bytes charged to a device.",
            labels=["model", "version", "device"],
        )
        replicas = GaugeMetricFamily(
            "vmm_model_replicas", "Loaded replicas.", labels=["model", "version"]
        )
        budget = GaugeMetricFamily(
            "vmm_device_memory_budget_bytes",
            "Memory budget of a device (absent: unlimited).",
            labels=["device"],
        )
        used = GaugeMetricFamily(
            "vmm_device_memory_charged_bytes",
            "Bytes of loaded models charged to a device.",
            labels=["device"],
        )
        evictions = CounterMetricFamily(
            "vmm_model_evictions", "Models unloaded to make room.", labels=[]
        )
        for model in snapshot.get("models", []):
            ready.add_metric(
                [model["name"], model["version"], model["state"]],
                1.0 if model["state"] == "READY" else 0.0,
            )
            replicas.add_metric([model["name"], model["version"]], float(model["replicas"]))
            for device, size in model.get("memory", {}).items():
                memory.add_metric([model["name"], model["version"], device], float(size))
        for device, info in snapshot.get("devices", {}).items():
            if info.get("budget") is not None:
                budget.add_metric([device], float(info["budget"]))
            used.add_metric([device], float(info["charged"]))
        evictions.add_metric([], float(snapshot.get("evictions", 0)))
        yield from (ready, memory, replicas, budget, used, evictions)


class HostCollector(Collector):
    """What the host's devices are doing, where it can be measured from this process.

    CPU and memory from ``psutil``; energy and power from deploy's telemetry (RAPL for CPU
    packages, NVML for NVIDIA GPUs), which says why a meter is missing rather than guessing.
    """

    def __init__(self, telemetry: Any = None) -> None:
        self._telemetry = telemetry
        self._discovered = telemetry is not None

    def _meters(self) -> Any:
        if not self._discovered:
            self._discovered = True
            try:
                from ai_vmm.deploy.telemetry import Telemetry

                self._telemetry = Telemetry.discover()
            except Exception:  # telemetry is optional; metrics must never fail a scrape
                self._telemetry = None
        return self._telemetry

    def collect(self) -> Iterator[Any]:
        with contextlib.suppress(ImportError):
            import psutil

            cpu = GaugeMetricFamily(
                "vmm_cpu_utilization_ratio", "Host CPU utilisation since the last scrape (0..1)."
            )
            cpu.add_metric([], psutil.cpu_percent(interval=None) / 100.0)
            yield cpu
            host = GaugeMetricFamily("vmm_host_memory_used_bytes", "Host memory in use.")
            host.add_metric([], float(psutil.virtual_memory().used))
            yield host
            rss = GaugeMetricFamily("vmm_process_resident_bytes", "This server's resident memory.")
            rss.add_metric([], float(psutil.Process(os.getpid()).memory_info().rss))
            yield rss
        telemetry = self._meters()
        if telemetry is None:
            return
        if telemetry.rapl is not None:
            energy = CounterMetricFamily(
                "vmm_cpu_energy_joules", "CPU package energy (RAPL, all packages)."
            )
            with contextlib.suppress(Exception):
                energy.add_metric([], float(telemetry.rapl.read_j()))
                yield energy
        if telemetry.gpus:
            yield from self._gpus(telemetry.gpus)

    def _gpus(self, gpus: Any) -> Iterator[Any]:
        util = GaugeMetricFamily(
            "vmm_gpu_utilization_ratio", "GPU busy share (0..1).", labels=["gpu"]
        )
        mem = GaugeMetricFamily("vmm_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"])
        power = GaugeMetricFamily("vmm_gpu_power_watts", "GPU board power.", labels=["gpu"])
        energy = CounterMetricFamily("vmm_gpu_energy_joules", "GPU energy.", labels=["gpu"])
        for gpu in gpus:
            label = [str(gpu.index)]
            used, watts = gpu.memory_used_bytes(), gpu.power_w()
            if used is not None:
                mem.add_metric(label, float(used))
            if watts is not None:
                power.add_metric(label, watts)
            with contextlib.suppress(Exception):
                energy.add_metric(label, float(gpu.read_j()))
            busy = _utilization(gpu)
            if busy is not None:
                util.add_metric(label, busy)
        yield from (util, mem, power, energy)


def _utilization(gpu: Any) -> float | None:
    """NVML's busy share of ``gpu`` (deploy's ``NvmlGpu`` has no reader for it)."""
    try:
        rates = gpu._nvml.nvmlDeviceGetUtilizationRates(gpu._handle)
    except Exception:
        return None
    return float(rates.gpu) / 100.0


__all__ = ["HostCollector", "ServerMetrics"]

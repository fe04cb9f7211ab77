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
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RAPL = Path("/sys/class/powercap")


class ServerMetrics:
    """Every metric the server exports, in one registry."""

    def __init__(self, allocation: Callable[[], dict[str, Any]] | None = None) -> None:
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
        r.register(HostCollector())

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
    """What the host's devices are doing, where it can be measured from this process."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._nvml_tried = False

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
        energy = _rapl_joules()
        if energy:
            family = CounterMetricFamily(
                "vmm_cpu_energy_joules", "CPU package energy (RAPL).", labels=["package"]
            )
            for package, joules in energy.items():
                family.add_metric([package], joules)
            yield family
        yield from self._gpus()

    def _gpus(self) -> Iterator[Any]:
        if not self._nvml_tried:
            self._nvml_tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # no NVML library or no NVIDIA driver here
                self._nvml = None
        nvml = self._nvml
        if nvml is None:
            return
        util = GaugeMetricFamily(
            "vmm_gpu_utilization_ratio", "GPU busy share (0..1).", labels=["gpu"]
        )
        mem = GaugeMetricFamily("vmm_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"])
        power = GaugeMetricFamily("vmm_gpu_power_watts", "GPU board power.", labels=["gpu"])
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            label = [str(index)]
            with contextlib.suppress(Exception):
                util.add_metric(label, nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
            with contextlib.suppress(Exception):
                mem.add_metric(label, float(nvml.nvmlDeviceGetMemoryInfo(handle).used))
            with contextlib.suppress(Exception):
                power.add_metric(label, nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)
        yield from (util, mem, power)


def _rapl_joules() -> dict[str, float]:
    """Cumulative CPU package energy per RAPL domain; empty where unreadable (containers)."""
    found: dict[str, float] = {}
    if not RAPL.is_dir():
        return found
    for domain in sorted(RAPL.glob("intel-rapl:*")):
        if domain.name.count(":") != 1:
            continue  # sub-domains (core, uncore) are inside the package figure
        with contextlib.suppress(OSError, ValueError):
            found[domain.name] = int((domain / "energy_uj").read_text()) / 1e6
    return found


__all__ = ["HostCollector", "ServerMetrics"]

"""Measuring deployment candidates on the samples: latency percentiles, throughput, memory, power.

Every contender is loaded first (memory: the process's resident set before and after loading
and warming up, plus the GPU's used memory where NVML reports it). Then contenders are timed in
interleaved rounds (each contender once per round, ``ROUNDS`` rounds), so a noisy neighbour on
the machine hits all of them alike. In its turn a contender runs the samples in order, each
call timed on its own, for its share of the time budget; energy counters are read around each
turn. Latency percentiles are over every timed call; throughput is the contender's batch
divided by the mean call time (one stream, one call after another).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ai_vmm.deploy.telemetry import (
    GPU_WATTS_FALLBACK,
    Meter,
    NvmlGpu,
    PowerFigure,
    Telemetry,
    Window,
    combine,
)

ROUNDS = 3
WARMUP_CALLS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0)


@dataclass
class Figures:
    """What one contender measured."""

    latencies_ms: list[float]
    batch: int
    memory_mb: float | None
    power: PowerFigure | None
    busy_cores: float = 0.0
    rate: float | None = None
    """Items per second measured directly (causal LMs: generated tokens per second)."""

    def latency(self, percentile: float) -> float:
        """The ``percentile`` of the call latencies, in ms (linear interpolation)."""
        if not self.latencies_ms:
            return math.inf
        return float(np.percentile(np.asarray(self.latencies_ms), percentile))

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.latencies_ms)) if self.latencies_ms else math.inf

    @property
    def throughput(self) -> float:
        """Inferences per second: batch items per mean call time (or the measured ``rate``)."""
        if self.rate is not None:
            return self.rate
        mean = self.mean_ms
        return self.batch * 1000.0 / mean if mean > 0 and math.isfinite(mean) else 0.0

    @property
    def energy_j(self) -> float | None:
        """Energy per item (a batch item; a generated token), from the power over the calls."""
        if self.power is None or self.throughput <= 0:
            return None
        return self.power.watts / self.throughput

    def to_json(self, percentile: float = 95.0) -> dict[str, Any]:
        data: dict[str, Any] = {
            "calls": len(self.latencies_ms),
            "batch": self.batch,
            "latency_ms": {
                f"p{p:g}": round(self.latency(p), 4) for p in sorted({*PERCENTILES, percentile})
            }
            | {"mean": round(self.mean_ms, 4)},
            "throughput_per_s": round(self.throughput, 2),
            "memory_mb": None if self.memory_mb is None else round(self.memory_mb, 1),
            "busy_cores": round(self.busy_cores, 2),
        }
        if self.power is not None:
            data["power"] = self.power.to_json()
            energy = self.energy_j
            data["energy_mj_per_inference"] = None if energy is None else round(energy * 1e3, 4)
        return data


@dataclass
class Contender:
    """Something to measure: a loader for the runnable and its feeds."""

    key: str
    load: Callable[[], Any]
    """Returns an object with ``run(dict) -> dict`` (and maybe ``close()``)."""
    load_key: str
    """Contenders with the same load key share one loaded runner (batch variants)."""
    family: str
    """Contenders of one family share a backend: it is primed once before memory is read."""
    feeds: Sequence[dict[str, Any]]
    batch: int = 1
    device_kind: str = "cpu"
    gpu_index: int = 0
    gpu_power_limit_w: float | None = None


def rss_bytes() -> int | None:
    """This process's resident set size (Linux ``/proc/self/statm``), or ``None``."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def measure_contenders(
    contenders: Sequence[Contender],
    telemetry: Telemetry,
    *,
    seconds: float,
    cores: int,
    say: Callable[[str], None] = lambda message: None,
) -> dict[str, Figures | str]:
    """Load every contender, then time them in interleaved rounds.

    Before anything is loaded for its memory figure, one contender of each family is loaded and
    closed, so that the backend's own libraries are not counted against its first model.

    Returns:
        ``key -> Figures``, or ``key -> reason`` for one that failed to load or run.
    """
    results: dict[str, Figures | str] = {}
    runners: dict[str, Any] = {}
    memory: dict[str, float | None] = {}
    failed_loads: dict[str, str] = {}
    try:
        primed: set[str] = set()
        for contender in contenders:
            if contender.family in primed:
                continue
            primed.add(contender.family)
            with contextlib.suppress(Exception):
                _close(contender.load())
        for contender in contenders:
            if contender.load_key in runners or contender.load_key in failed_loads:
                continue
            try:
                runners[contender.load_key], memory[contender.load_key] = _load(
                    contender, telemetry
                )
            except Exception as exc:  # a payload the device rejects: that contender fails
                failed_loads[contender.load_key] = _one_line(exc)
        for contender in contenders:
            if contender.load_key in failed_loads:
                results[contender.key] = failed_loads[contender.load_key]
        live = [c for c in contenders if c.key not in results]
        times: dict[str, list[float]] = {c.key: [] for c in live}
        power: dict[str, list[PowerFigure]] = {c.key: [] for c in live}
        busy: dict[str, list[float]] = {c.key: [] for c in live}
        cursor: dict[str, int] = {c.key: 0 for c in live}
        share = seconds / ROUNDS
        for round_index in range(ROUNDS):
            say(f"timing {len(live)} candidates, round {round_index + 1} of {ROUNDS}")
            for contender in live:
                key = contender.key
                if key in results:
                    continue
                meter = _meter(contender, telemetry)
                try:
                    with Window(meter, cores) as window:
                        cursor[key] = _turn(
                            runners[contender.load_key],
                            contender.feeds,
                            cursor[key],
                            share,
                            times[key],
                        )
                except Exception as exc:
                    results[key] = _one_line(exc)
                    continue
                figure = window.figure
                if figure is not None and contender.device_kind == "gpu" and meter is None:
                    figure = _gpu_estimate(contender, figure.seconds)
                if figure is not None:
                    power[key].append(figure)
                busy[key].append(window.busy_cores)
        for contender in live:
            key = contender.key
            if key in results:
                continue
            results[key] = Figures(
                times[key],
                contender.batch,
                memory.get(contender.load_key),
                combine(power[key]),
                float(np.mean(busy[key])) if busy[key] else 0.0,
            )
    finally:
        for runner in runners.values():
            _close(runner)
    return results


def _close(runner: Any) -> None:
    close = getattr(runner, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


def _load(contender: Contender, telemetry: Telemetry) -> tuple[Any, float | None]:
    gpu = (
        telemetry.meter_for("gpu", contender.gpu_index) if contender.device_kind == "gpu" else None
    )
    before_host = rss_bytes()
    before_gpu = gpu.memory_used_bytes() if isinstance(gpu, NvmlGpu) else None
    runner = contender.load()
    for feed in list(contender.feeds)[:WARMUP_CALLS] or []:
        runner.run(feed)
    for _ in range(max(0, WARMUP_CALLS - len(contender.feeds))):
        runner.run(contender.feeds[0])
    after_host = rss_bytes()
    after_gpu = gpu.memory_used_bytes() if isinstance(gpu, NvmlGpu) else None
    if before_host is None or after_host is None:
        return runner, None
    total = max(after_host - before_host, 0)
    if before_gpu is not None and after_gpu is not None:
        total += max(after_gpu - before_gpu, 0)
    return runner, total / 2**20


def _meter(contender: Contender, telemetry: Telemetry) -> Meter | None:
    return telemetry.meter_for(contender.device_kind, contender.gpu_index)


def _turn(
    runner: Any, feeds: Sequence[dict[str, Any]], start: int, budget_s: float, out: list[float]
) -> int:
    """Run feeds in order from ``start`` for ``budget_s`` (at least one call); next start."""
    deadline = time.perf_counter() + budget_s
    index = start
    while True:
        feed = feeds[index % len(feeds)]
        begin = time.perf_counter()
        runner.run(feed)
        out.append((time.perf_counter() - begin) * 1000.0)
        index += 1
        if time.perf_counter() >= deadline:
            return index % len(feeds)


def _gpu_estimate(contender: Contender, seconds: float) -> PowerFigure:
    watts = contender.gpu_power_limit_w or GPU_WATTS_FALLBACK
    return PowerFigure(
        watts,
        watts * seconds,
        seconds,
        False,
        f"estimated: the GPU's power limit ({watts:g} W); NVML does not report its power here",
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:400]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""Timing a runnable on fixed inputs: warm-up, then a time-boxed series, median latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Latency statistics of one contender, in milliseconds."""

    median_ms: float
    p90_ms: float
    runs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "median_ms": round(self.median_ms, 4),
            "p90_ms": round(self.p90_ms, 4),
            "runs": self.runs,
        }


def measure(
    run: Callable[[], Any],
    *,
    warmup: int = 3,
    budget_s: float = 1.0,
    min_runs: int = 5,
    max_runs: int = 500,
) -> Timing:
    """Time ``run()``: ``warmup`` untimed calls, then calls until ``budget_s`` or ``max_runs``."""
    for _ in range(warmup):
        run()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000.0)
    ordered = sorted(samples)
    return Timing(
        median_ms=statistics.median(ordered),
        p90_ms=ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        runs=len(ordered),
    )

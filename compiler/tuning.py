"""Timing: a runnable on fixed inputs (warm-up, a time-boxed series, median latency), and
contenders timed in interleaved rounds, compared per round so that noise is not mistaken for a
difference (``interleaved``, ``beats``)."""

from __future__ import annotations

import os
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


ROUNDS = 5
"""Interleaved rounds per timing: with five, "every round faster" is a sign test at p = 1/32."""
MATERIAL = 0.97
"""A challenger must also be at least 3% faster (median of its per-round ratios) to count."""
NOISY_SPREAD = 0.25
"""Round medians spread over more than this share of their median: too noisy to decide."""


@dataclass(frozen=True)
class Rounds:
    """One contender's per-round median latencies (ms), taken in interleaved rounds."""

    medians: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        finite = [m for m in self.medians if m != float("inf")]
        return statistics.median(finite) if finite else float("inf")

    @property
    def spread(self) -> float:
        """``(max - min) / median`` of the round medians: how far rounds disagree."""
        finite = [m for m in self.medians if m != float("inf")]
        if len(finite) < 2 or not self.median_ms:
            return 0.0
        return (max(finite) - min(finite)) / self.median_ms

    def to_json(self) -> dict[str, Any]:
        finite = [m for m in self.medians if m != float("inf")]
        return {
            "median_ms": round(self.median_ms, 4),
            # With five rounds the range of the round medians covers the true median with
            # probability 1 - 2 * 0.5**5 = 94%: a distribution-free interval.
            "ci_ms": [round(min(finite), 4), round(max(finite), 4)] if finite else None,
            "spread": round(self.spread, 3),
            "rounds": [round(m, 4) for m in self.medians],
        }


def interleaved(
    runners: list[Callable[[], Any]], *, rounds: int = ROUNDS, budget_s: float = 1.0
) -> list[Rounds]:
    """Time every runner once per round, ``rounds`` times; ``budget_s`` per runner in all.

    Each runner is warmed up with one call first; a round gives it ``budget_s / rounds`` (at
    least one call), so a model that takes seconds a call costs ``rounds`` calls, not
    ``rounds`` times a fixed minimum. A runner that raises gets ``inf`` for that round (the
    caller decides what a failure means). Interleaving means a neighbour that loads the
    machine for a while slows every contender of that round alike, and the per-round
    comparison in :func:`beats` cancels it.
    """
    per_round = max(budget_s / rounds, 0.02)
    results: list[list[float]] = [[] for _ in runners]
    alive = []
    for run in runners:
        try:
            run()
            alive.append(True)
        except Exception:
            alive.append(False)
    for _ in range(rounds):
        for index, run in enumerate(runners):
            if not alive[index]:
                results[index].append(float("inf"))
                continue
            try:
                results[index].append(
                    measure(run, budget_s=per_round, warmup=0, min_runs=1).median_ms
                )
            except Exception:
                results[index].append(float("inf"))
    return [Rounds(tuple(r)) for r in results]


def beats(challenger: Rounds, incumbent: Rounds, material: float = MATERIAL) -> bool:
    """Whether ``challenger`` is faster beyond the noise: faster in every round (paired by
    round) and by at least ``1 - material`` at the median of the per-round ratios."""
    pairs = list(zip(challenger.medians, incumbent.medians, strict=True))
    if not pairs or any(b in (0.0, float("inf")) or a == float("inf") for a, b in pairs):
        return False
    ratios = [a / b for a, b in pairs]
    return all(r < 1.0 for r in ratios) and statistics.median(ratios) <= material


def ratio_summary(ours: Rounds, baseline: Rounds) -> dict[str, Any]:
    """``ours / baseline`` per round: the median ratio and its range (one direction: < 1 is
    faster than the baseline)."""
    pairs = zip(ours.medians, baseline.medians, strict=True)
    ratios = [a / b for a, b in pairs if b and b != float("inf")]
    if not ratios:
        return {"ratio": None}
    return {
        "ratio": round(statistics.median(ratios), 3),
        "range": [round(min(ratios), 3), round(max(ratios), 3)],
    }


BUSY_SHARE = 0.25
"""Share of the machine's CPU time that other processes may take while contenders are timed;
above it the machine counts as busy and thread-count variants are measured but not adopted (a
busy machine favours fewer threads for reasons a quiet one would not have)."""


class OthersCpu:
    """Measures, over a ``with`` block, the share of the machine's CPU time that processes other
    than this one used (``share``; ``None`` where ``/proc/stat`` is not available).

    The load average cannot tell: it counts this process's own timing threads too.
    """

    def __init__(self) -> None:
        self.share: float | None = None
        self._start: tuple[float, float, float] | None = None

    def __enter__(self) -> OthersCpu:
        self._start = _cpu_sample()
        return self

    def __exit__(self, *args: object) -> None:
        end = _cpu_sample()
        if self._start is None or end is None:
            return
        busy = end[0] - self._start[0]
        total = end[1] - self._start[1]
        own = end[2] - self._start[2]
        if total > 0:
            self.share = round(max(0.0, (busy - own) / total), 3)


def _cpu_sample() -> tuple[float, float, float] | None:
    """(busy seconds of every core, total seconds of every core, this process's CPU seconds)."""
    try:
        with open("/proc/stat") as handle:
            fields = [float(x) for x in handle.readline().split()[1:]]
        hertz = float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, AttributeError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    busy = sum(fields[:8]) - idle if len(fields) >= 8 else sum(fields) - idle
    times = os.times()
    return busy / hertz, (busy + idle) / hertz, times.user + times.system


def load_average() -> float | None:
    """The one-minute load average, where the OS reports it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None

"""Load generators for the parallel benchmark: saturation throughput and latency at a stated load.

A contender is a ``submit(feed) -> Future`` function. ``saturation`` keeps ``window`` requests in
flight for ``seconds`` (closed loop) and counts completions; ``open_loop`` sends requests at
Poisson arrival times at a fixed rate and measures each one's latency from its *scheduled*
arrival (so a contender that makes ``submit`` wait is charged for the wait: no coordinated
omission). ``one_at_a_time`` turns a blocking ``run`` into a ``submit`` with one worker.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

Submit = Callable[[Mapping[str, Any]], "Future[Any]"]


def one_at_a_time(run: Callable[[Mapping[str, Any]], Any]) -> tuple[Submit, Callable[[], None]]:
    """A ``submit`` that runs requests one after another on one thread, and its shutdown."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="bench-sequential")
    return (lambda feed: pool.submit(run, feed)), pool.shutdown


def saturation(submit: Submit, feed: Mapping[str, Any], seconds: float, window: int) -> float:
    """Requests per second with ``window`` requests always in flight, over ``seconds``."""
    done = 0
    lock = threading.Condition()
    in_flight = 0

    def finished(future: Future[Any]) -> None:
        nonlocal done, in_flight
        future.result()
        with lock:
            done += 1
            in_flight -= 1
            lock.notify()

    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        with lock:
            while in_flight >= window:
                lock.wait()
            in_flight += 1
        submit(feed).add_done_callback(finished)
    with lock:
        while in_flight:
            lock.wait()
        count = done
    return count / (time.perf_counter() - start)


def open_loop(
    submit: Submit, feed: Mapping[str, Any], rate: float, count: int, seed: int = 0
) -> dict[str, float]:
    """Latency percentiles (ms) of ``count`` requests at ``rate`` per second (Poisson)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=count)
    latencies: list[float] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def finished(scheduled: float) -> Callable[[Future[Any]], None]:
        def record(future: Future[Any]) -> None:
            future.result()
            with lock:
                latencies.append(time.perf_counter() - scheduled)
                if len(latencies) == count:
                    all_done.set()

        return record

    start = time.perf_counter()
    at = start
    for gap in gaps:
        at += gap
        delay = at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        submit(feed).add_done_callback(finished(at))
    all_done.wait(timeout=max(60.0, 20 * count / rate))
    elapsed = time.perf_counter() - start
    values = np.asarray(latencies) * 1000.0
    return {
        "rate_per_s": round(rate, 2),
        "achieved_per_s": round(len(values) / elapsed, 2),
        "requests": len(values),
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p90_ms": round(float(np.percentile(values, 90)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "max_ms": round(float(values.max()), 3),
    }


def interleaved(
    contenders: Mapping[str, Callable[[], float]], rounds: int
) -> dict[str, list[float]]:
    """Each contender's measurement per round; the contenders take turns within a round, so a
    change of load on the machine reaches all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, measure in contenders.items():
            samples[name].append(measure())
    return samples


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of a contender's rounds."""
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def ratio(samples: dict[str, list[float]], numerator: str, denominator: str) -> dict[str, float]:
    """The per-round ratio of two contenders: median, min and max over the rounds."""
    values = [a / b for a, b in zip(samples[numerator], samples[denominator], strict=True)]
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }

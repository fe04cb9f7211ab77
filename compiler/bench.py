"""``vmmc bench``: our artifact against the baselines, in one process, on the same inputs.

Method (stated in every report):
- Every contender gets the same input arrays (one dict, built once) and its library's default
  thread settings; our artifact uses the executor config it was compiled with (which may be
  fewer threads, never more).
- Latency: a warm-up, then interleaved rounds (each round times every contender for an equal
  time box), so drift on the machine hits all alike; p50/p90/p99 over all timed calls.
- Throughput: ``streams`` requests in flight for a fixed time (OpenVINO: an ``AsyncInferQueue``;
  ONNX Runtime, torch and ours: that many threads calling ``run``).
- Memory: peak resident set size above the level before the contender was loaded, sampled every
  2 ms during its load and warm-up (a process-level figure; contenders load one after another).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import CompileError
from ai_vmm.tuning import NOISY_SPREAD, Rounds, load_average, ratio_summary

BASELINES = ("onnxruntime", "openvino", "torch")
OURS = "ai-vmm"


@dataclass
class Contender:
    """One thing to time: a name, a single-call ``run`` and a ``throughput`` driver."""

    name: str
    load: Callable[[], Callable[[], Any]]
    """Loads the model; returns ``run()`` (one inference on the shared inputs)."""
    concurrent: Callable[[int, float], int] | None = None
    """``(streams, seconds) -> inferences completed``; default: threads calling ``run``."""
    run: Callable[[], Any] | None = None
    load_s: float = 0.0
    peak_rss_mb: float = 0.0
    samples_ms: list[float] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)
    throughput: float = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.samples_ms)

        def pct(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

        return {
            "name": self.name,
            "p50_ms": round(statistics.median(ordered), 4),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "round_medians_ms": [round(v, 4) for v in self.round_medians_ms],
            "calls": len(ordered),
            "throughput_per_s": round(self.throughput, 1),
            "load_s": round(self.load_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


@dataclass(frozen=True)
class BenchSettings:
    batch: int = 1
    streams: int = 2
    seconds: float = 3.0
    """Total latency time box per contender, spread over ``rounds``."""
    rounds: int = 5
    throughput_seconds: float = 1.0
    profile: bool = False


class _PeakRss:
    """Samples this process's RSS in a thread; ``peak`` above ``base`` in MiB."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.base = self._process.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / (1 << 20)


def _threads_throughput(run: Callable[[], Any], streams: int, seconds: float) -> int:
    done = [0] * streams
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            run()
            done[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done)


def artifact_contender(artifact: Path, feed: dict[str, Any]) -> tuple[Contender, Any]:
    """Our artifact; also returns a handle to the loaded model (for profiling)."""
    holder: dict[str, Any] = {}

    def load() -> Callable[[], Any]:
        from ai_vmm.runtime import load as load_artifact

        holder["model"] = load_artifact(artifact)
        model = holder["model"]
        return lambda: model.run(feed)

    return Contender(OURS, load), holder


def onnxruntime_contender(model: Path, feed: dict[str, Any]) -> Contender:
    def load() -> Callable[[], Any]:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return lambda: session.run(None, feed)

    return Contender("onnxruntime", load)


def openvino_contender(model: Path, feed: dict[str, Any]) -> Contender:
    state: dict[str, Any] = {}

    def load() -> Callable[[], Any]:
        import openvino as ov

        state["compiled"] = ov.Core().compile_model(str(model), "CPU")
        request = state["compiled"].create_infer_request()
        return lambda: request.infer(feed)

    def concurrent(streams: int, seconds: float) -> int:
        import openvino as ov

        queue = ov.AsyncInferQueue(state["compiled"], streams)
        count = [0]

        def done(request: Any, userdata: Any) -> None:
            count[0] += 1

        queue.set_callback(done)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            queue.start_async(feed)
        queue.wait_all()
        return count[0]

    return Contender("openvino", load, concurrent)


def torch_contender(module: Any, feed: dict[str, Any], input_order: list[str]) -> Contender:
    def load() -> Callable[[], Any]:
        import torch

        module.eval()
        tensors = [torch.from_numpy(np.ascontiguousarray(feed[name])) for name in input_order]

        def run() -> Any:
            with torch.inference_mode():
                return module(*tensors)

        return run

    return Contender("torch eager", load)


def measure_all(
    contenders: list[Contender], settings: BenchSettings, say: Callable[[str], None]
) -> None:
    """Load each contender (timing load and memory), then time them all in interleaved rounds."""
    for contender in contenders:
        say(f"loading {contender.name}")
        with _PeakRss() as rss:
            start = time.perf_counter()
            contender.run = contender.load()
            contender.load_s = time.perf_counter() - start
            for _ in range(5):
                contender.run()
        contender.peak_rss_mb = rss.mib
    box = settings.seconds / settings.rounds
    for round_index in range(settings.rounds):
        say(f"latency round {round_index + 1}/{settings.rounds}")
        for contender in contenders:
            assert contender.run is not None
            timed: list[float] = []
            deadline = time.perf_counter() + box
            while not timed or time.perf_counter() < deadline:
                start = time.perf_counter()
                contender.run()
                timed.append((time.perf_counter() - start) * 1000.0)
            contender.samples_ms += timed
            contender.round_medians_ms.append(statistics.median(timed))
    for contender in contenders:
        say(f"throughput of {contender.name} with {settings.streams} in flight")
        assert contender.run is not None
        seconds = settings.throughput_seconds
        start = time.perf_counter()
        if contender.concurrent is not None:
            count = contender.concurrent(settings.streams, seconds)
        else:
            count = _threads_throughput(contender.run, settings.streams, seconds)
        contender.throughput = count / (time.perf_counter() - start)


def compare(contenders: list[Contender]) -> dict[str, Any]:
    """Ours against the best baseline, always as a ratio of times (ours / baseline: below 1
    is faster), with the range of the per-round ratios and a verdict that says when the
    rounds disagree about which side is faster (the machine was too noisy to tell)."""
    ours = next((c for c in contenders if c.name == OURS), None)
    others = [c for c in contenders if c.name != OURS]
    if ours is None or not others:
        return {}
    best_latency = min(others, key=lambda c: statistics.median(c.samples_ms))
    best_throughput = max(others, key=lambda c: c.throughput)
    paired = ratio_summary(
        Rounds(tuple(ours.round_medians_ms)), Rounds(tuple(best_latency.round_medians_ms))
    )
    low, high = paired.get("range", [None, None])
    if low is None or high is None:
        verdict = "not measured"
    elif high < 1.0:
        verdict = "faster in every round"
    elif low > 1.0:
        verdict = "slower in every round"
    else:
        verdict = "within the noise: rounds disagree on which is faster"
    spread = max(Rounds(tuple(c.round_medians_ms)).spread for c in (ours, best_latency))
    out: dict[str, Any] = {
        "best_baseline_latency": best_latency.name,
        "latency_ratio": round(
            statistics.median(ours.samples_ms) / statistics.median(best_latency.samples_ms), 3
        ),
        "latency_ratio_rounds": paired,
        "verdict": verdict,
        "best_baseline_throughput": best_throughput.name,
        # Time per inference with requests in flight, ours / baseline (same direction).
        "throughput_time_ratio": round(best_throughput.throughput / ours.throughput, 3)
        if ours.throughput
        else None,
    }
    if spread > NOISY_SPREAD:
        out["warning"] = (
            f"noisy machine: round medians spread {spread:.0%} (load average "
            f"{load_average()}); rerun on a quieter machine before trusting the ratio"
        )
    return out


def profile_rows(model: Any, feed: dict[str, Any], runs: int = 20) -> dict[str, Any]:
    """Per-partition wall time and the backends' own per-op counters, merged."""
    partitions: dict[str, list[float]] = {}
    for _ in range(runs):
        _, times = model.run_profiled(feed)
        for part_id, seconds in times:
            partitions.setdefault(part_id, []).append(seconds * 1000.0)
    ops = sorted(model.profile_ops(feed, runs), key=lambda row: -row["ms"])
    total = sum(row["ms"] for row in ops) or 1.0
    return {
        "partitions": {k: round(statistics.median(v), 4) for k, v in partitions.items()},
        "transfers": {},
        "top_ops": [
            {**row, "ms": round(row["ms"], 4), "share": round(row["ms"] / total, 3)}
            for row in ops[:15]
        ],
    }


def check_baselines(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise CompileError(
            f"unknown baseline {', '.join(unknown)} (choose from {', '.join(BASELINES)})"
        )
    return names

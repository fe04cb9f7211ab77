"""``Deployment``: a chosen artifact, running, watched against its constraints.

``model(**inputs)`` / ``model.run(inputs)`` run the compiled model (numpy in, numpy out);
``model.generate(...)`` runs a causal LM (the runtime's LM object, same signature). Every call
is timed. ``stats()`` reports calls, latency percentiles over the recent calls, throughput,
energy where a counter reports it, and each constraint's state (``ok``, ``at risk`` within 10%
of its limit, ``violated``). A deployment whose recent latency percentile stays over
``max_latency_ms`` for ``SUSTAINED`` checks in a row (a check every ``CHECK_EVERY`` calls over
the last ``WINDOW`` calls) logs a warning and sets ``stats()["latency_violation"]`` until it
recovers for as many checks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.deploy.constraints import Constraints
from ai_vmm.deploy.explain import format_explanation
from ai_vmm.deploy.telemetry import Meter
from ai_vmm.runtime.errors import InputError, VmmError

logger = logging.getLogger("ai_vmm.deploy")

WINDOW = 50
CHECK_EVERY = 10
SUSTAINED = 3
HISTORY = 2048
AT_RISK = 0.9


class LatencyMonitor:
    """Recent call latencies, and whether the latency constraint keeps being violated."""

    def __init__(self, limit_ms: float | None, percentile: float, label: str) -> None:
        self.limit_ms = limit_ms
        self.percentile = percentile
        self.label = label
        self.latencies: deque[float] = deque(maxlen=HISTORY)
        self.calls = 0
        self.errors = 0
        self.busy_s = 0.0
        self.first_call: float | None = None
        self.last_call: float | None = None
        self.violating = False
        self.last_window_ms: float | None = None
        self._over = 0
        self._under = 0
        self._lock = threading.Lock()

    def record(
        self, started: float, seconds: float, ok: bool = True, latency_s: float | None = None
    ) -> None:
        """One call: ``seconds`` busy; its latency (default ``seconds``; causal LMs: TTFT)."""
        with self._lock:
            if not ok:
                self.errors += 1
                return
            self.calls += 1
            self.busy_s += seconds
            self.latencies.append((seconds if latency_s is None else latency_s) * 1000.0)
            self.first_call = started if self.first_call is None else self.first_call
            self.last_call = started + seconds
            if self.limit_ms is None or self.calls % CHECK_EVERY or len(self.latencies) < WINDOW:
                return
            recent = list(self.latencies)[-WINDOW:]
            value = float(np.percentile(recent, self.percentile))
            self.last_window_ms = value
            message = None
            if value > self.limit_ms:
                self._over, self._under = self._over + 1, 0
                if self._over >= SUSTAINED and not self.violating:
                    self.violating = True
                    message = (
                        f"{self.label}: p{self.percentile:g} latency over the last {WINDOW} calls "
                        f"is {value:.2f} ms, over max_latency_ms {self.limit_ms:g} for "
                        f"{self._over} checks in a row"
                    )
            else:
                self._under, self._over = self._under + 1, 0
                if self.violating and self._under >= SUSTAINED:
                    self.violating = False
                    logger.info(
                        "%s: latency back under %g ms (%.2f ms)", self.label, self.limit_ms, value
                    )
        if message is not None:
            logger.warning(message)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            values = list(self.latencies)
            data: dict[str, Any] = {
                "calls": self.calls,
                "errors": self.errors,
                "latency_violation": self.violating,
            }
            first, last, busy = self.first_call, self.last_call, self.busy_s
        if values:
            array = np.asarray(values)
            data["latency_ms"] = {
                "p50": round(float(np.percentile(array, 50)), 4),
                "p90": round(float(np.percentile(array, 90)), 4),
                f"p{self.percentile:g}": round(float(np.percentile(array, self.percentile)), 4),
                "p99": round(float(np.percentile(array, 99)), 4),
                "mean": round(float(array.mean()), 4),
                "max": round(float(array.max()), 4),
                "over": len(values),
            }
            data["busy_throughput_per_s"] = round(float(len(values) / (array.sum() / 1000.0)), 2)
            if first is not None and last is not None and last > first:
                data["observed_rate_per_s"] = round(self.calls / (last - first), 2)
        if busy:
            data["busy_s"] = round(busy, 4)
        return data


class Deployment:
    """A deployed model: call it, generate with it, watch it, explain why it was chosen.

    Attributes:
        kind: ``model`` or ``causal-lm``.
        model: the runtime object (``ai_vmm.runtime.CompiledModel`` or the LM object).
        artifact_path: the chosen artifact in the deployment store.
        batch: the batch the search chose (what a server should gather per call; direct calls
            run at the batch they are given).
        constraints: the constraints it was deployed under.
    """

    def __init__(
        self,
        model: Any,
        *,
        artifact_path: Path,
        explanation: dict[str, Any],
        constraints: Constraints,
        meter: Meter | None = None,
        batch: int = 1,
    ) -> None:
        self.model = model
        self.artifact_path = Path(artifact_path)
        self.constraints = constraints
        self.batch = batch
        self._explanation = explanation
        self._meter = meter
        self._energy0 = _read(meter)
        self._t0 = time.perf_counter()
        manifest = getattr(model, "manifest", None)
        self.kind = str(getattr(manifest, "kind", "model"))
        label = str(explanation.get("model", {}).get("label", self.artifact_path))
        self._monitor = LatencyMonitor(
            constraints.max_latency_ms, constraints.latency_percentile, f"deployment {label}"
        )
        self._tokens = 0
        self._closed = False

    @property
    def inputs(self) -> Any:
        return self.model.inputs

    @property
    def outputs(self) -> Any:
        return self.model.outputs

    @property
    def explanation(self) -> dict[str, Any]:
        """The search's record: every candidate with its figures and checks (JSON-ready)."""
        return self._explanation

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the model on ``inputs`` (numpy arrays by name); the outputs by name."""
        if self.kind == "causal-lm":
            raise InputError(
                "this deployment is a causal language model: call generate(prompt), not run()"
            )
        started = time.perf_counter()
        try:
            outputs: dict[str, Any] = self.model.run(inputs)
        except BaseException:
            self._monitor.record(started, 0.0, ok=False)
            raise
        self._monitor.record(started, time.perf_counter() - started)
        return outputs

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Generate text (causal LMs): the LM runtime object's ``generate``, timed."""
        generate = getattr(self.model, "generate", None)
        if self.kind != "causal-lm" or generate is None:
            raise InputError("this deployment is not a causal language model: call it with inputs")
        started = time.perf_counter()
        try:
            result = generate(*args, **kwargs)
        except BaseException:
            self._monitor.record(started, 0.0, ok=False)
            raise
        if kwargs.get("stream"):
            return _TimedStream(result, started, self)
        items = result if isinstance(result, list) else [result]
        ttfts = [float(i.ttft_s) for i in items if getattr(i, "ttft_s", None) is not None]
        self._monitor.record(
            started, time.perf_counter() - started, latency_s=max(ttfts) if ttfts else None
        )
        for item in items:
            self._tokens += len(getattr(item, "tokens", ()) or ())
        return result

    def stats(self) -> dict[str, Any]:
        """Calls, latency percentiles (recent calls), throughput, energy, constraints at risk."""
        data = self._monitor.snapshot()
        data["batch"] = self.batch
        chosen = self._explanation.get("chosen", {})
        figures = chosen.get("figures", {})
        energy: dict[str, Any] = {}
        if "energy_mj_per_inference" in figures:
            power = figures.get("power", {})
            energy = {
                "per_inference_mj_at_deploy": figures["energy_mj_per_inference"],
                "per": "generated token" if self.kind == "causal-lm" else "inference",
                "measured": bool(power.get("measured")),
                "source": power.get("source"),
            }
        if self._meter is not None:
            joules = (_read(self._meter) or 0.0) - (self._energy0 or 0.0)
            seconds = time.perf_counter() - self._t0
            energy["since_deploy_j"] = round(joules, 3)
            energy["average_power_w"] = round(joules / seconds, 2) if seconds > 0 else None
            energy["scope"] = f"{self._meter.name}: the whole device, idle time included"
            if data["calls"]:
                energy["per_call_j_upper_bound"] = round(joules / data["calls"], 4)
        if energy:
            data["energy"] = energy
        if self._tokens:
            data["tokens_generated"] = self._tokens
            busy = data.get("busy_s")
            if busy:
                data["tokens_per_s"] = round(self._tokens / busy, 2)
        data["constraints"] = self._constraint_states(data, figures)
        data["at_risk"] = sorted(k for k, v in data["constraints"].items() if v["state"] != "ok")
        return data

    def _constraint_states(self, data: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
        states: dict[str, Any] = {}
        c = self.constraints
        key = f"p{c.latency_percentile:g}"
        if c.max_latency_ms is not None:
            recent = self._monitor.last_window_ms
            if recent is None:
                recent = data.get("latency_ms", {}).get(key)
            if recent is None:
                recent = figures.get("latency_ms", {}).get(key)
            states["max_latency_ms"] = _state(recent, c.max_latency_ms, upper=True)
            if data["latency_violation"]:
                states["max_latency_ms"]["state"] = "violated"
        if c.min_throughput is not None:
            mean = data.get("latency_ms", {}).get("mean")
            live = self.batch * 1000.0 / mean if mean else figures.get("throughput_per_s")
            states["min_throughput"] = _state(live, c.min_throughput, upper=False)
        if c.power_budget_watts is not None:
            watts = figures.get("power", {}).get("watts")
            states["power_budget_watts"] = _state(watts, c.power_budget_watts, upper=True)
        if c.max_memory_mb is not None:
            states["max_memory_mb"] = _state(figures.get("memory_mb"), c.max_memory_mb, upper=True)
        return states

    def explain(self) -> str:
        """Every candidate the search measured, its figures, and which constraint it failed."""
        return format_explanation(self._explanation)

    def close(self) -> None:
        """Release the model (idempotent)."""
        if not self._closed:
            self._closed = True
            close = getattr(self.model, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        chosen = self._explanation.get("chosen", {}).get("key", "?")
        return f"Deployment({self.kind}, {chosen}, {self.artifact_path})"


class _TimedStream:
    """The LM's text stream, passed through, with its time to first piece and its total time
    recorded when it ends (``result`` and the stream's other attributes stay reachable)."""

    def __init__(self, stream: Any, started: float, owner: Deployment) -> None:
        self._stream = stream
        self._iterator: Iterator[Any] = iter(stream)
        self._started = started
        self._first: float | None = None
        self._owner = owner
        self._done = False

    def __iter__(self) -> _TimedStream:
        return self

    def __next__(self) -> Any:
        try:
            piece = next(self._iterator)
        except StopIteration:
            self._finish()
            raise
        if self._first is None:
            self._first = time.perf_counter() - self._started
        return piece

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        owner = self._owner
        owner._monitor.record(
            self._started, time.perf_counter() - self._started, latency_s=self._first
        )
        result = getattr(self._stream, "result", None)
        owner._tokens += len(getattr(result, "tokens", ()) or ())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _state(value: Any, limit: float, *, upper: bool) -> dict[str, Any]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"limit": limit, "value": None, "state": "ok"}
    value = float(value)
    if upper:
        state = "violated" if value > limit else "at risk" if value > AT_RISK * limit else "ok"
    else:
        state = "violated" if value < limit else "at risk" if value < limit / AT_RISK else "ok"
    return {"limit": limit, "value": round(value, 4), "state": state}


def _read(meter: Meter | None) -> float | None:
    if meter is None:
        return None
    try:
        return meter.read_j()
    except (OSError, VmmError, ValueError):
        return None

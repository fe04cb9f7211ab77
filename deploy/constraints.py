"""What a deployment must honour: ``Constraints``, validated, from keyword arguments or a dict.

``Constraints(max_latency_ms=20, preferred_hardware=["NVIDIA_GPU", "INTEL_CPU"])`` and
``Constraints.parse({"max_latency_ms": 20, ...})`` (or ``"max_latency_ms=20"`` strings from the
command line) give the same object. Every limit is checked when the object is made: a negative
latency, an unknown key, an unknown hardware name or accuracy metric is a one-line
``ConstraintError`` saying what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ai_vmm.deploy.hardware import HARDWARE_NAMES, normalise_hardware
from ai_vmm.runtime.errors import ConstraintError

ACCURACY_METRICS = ("cosine", "top1", "max_abs", "mean_abs")
OBJECTIVES = ("auto", "cost", "latency", "throughput")
MAX_BATCH = 256
MAX_REPLICAS = 64


@dataclass(frozen=True)
class Constraints:
    """Limits a deployment must meet, and how to choose among the candidates that meet them.

    Attributes:
        max_latency_ms: a latency bound in milliseconds, at the shapes of the samples (each call
            of a batched candidate counts whole), at ``latency_percentile``.
        latency_percentile: which percentile ``max_latency_ms`` bounds (default 95).
        min_throughput: inferences per second, sequentially on one stream at the candidate's
            batch (causal LMs: generated tokens per second).
        power_budget_watts: the average power the device draws while the model runs, measured
            where the device reports power (NVML, RAPL), else estimated (and said so).
        max_memory_mb: memory the loaded model takes (host RSS growth plus device memory).
        max_accuracy_drop: per metric (``cosine``, ``top1``, ``max_abs``, ``mean_abs``), how far
            the outputs may move from the float model's on the samples; giving it permits
            INT8 / FP16 / BF16 candidates.
        preferred_hardware: hardware classes in order of preference (``NVIDIA_GPU``,
            ``INTEL_CPU``, ...; ``CPU`` means the host CPU whatever its vendor). Among candidates
            that meet every limit, the most preferred class wins; an absent class is skipped.
        max_batch: the largest batch the search may try (batching needs a dynamic batch axis;
            1 keeps the model at the samples' batch).
        optimize: what to minimise among the candidates that meet every limit: ``cost``
            (energy per inference), ``latency``, ``throughput`` (maximised), or ``auto``:
            ``cost`` when a latency, throughput or power limit is given, else ``latency``.
        replicas: run the model on several devices at once (``ai_vmm.deploy.replicas``):
            ``"auto"`` (every device with a candidate that meets the constraints), a number
            (the N best such devices) or device keys (``["openvino:CPU", "onnxruntime:CPU"]``).
            The set is measured on the samples against its best device alone and kept only
            where it is faster; ``None`` (default) or 1: one device.
    """

    max_latency_ms: float | None = None
    latency_percentile: float = 95.0
    min_throughput: float | None = None
    power_budget_watts: float | None = None
    max_memory_mb: float | None = None
    max_accuracy_drop: Mapping[str, float] = field(default_factory=dict)
    preferred_hardware: tuple[str, ...] = ()
    max_batch: int = 32
    optimize: str = "auto"
    replicas: str | int | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("max_latency_ms", "min_throughput", "power_budget_watts", "max_memory_mb"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _positive(name, value))
        percentile = _number("latency_percentile", self.latency_percentile)
        if not 0 < percentile <= 100:
            raise ConstraintError(
                f"latency_percentile must be in (0, 100], got {self.latency_percentile!r}"
            )
        object.__setattr__(self, "latency_percentile", percentile)
        object.__setattr__(self, "max_accuracy_drop", _accuracy(self.max_accuracy_drop))
        object.__setattr__(self, "preferred_hardware", _hardware(self.preferred_hardware))
        batch = self.max_batch
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            raise ConstraintError(f"max_batch must be an integer in 1..{MAX_BATCH}, got {batch!r}")
        if self.optimize not in OBJECTIVES:
            raise ConstraintError(
                f"optimize must be one of {', '.join(OBJECTIVES)}, got {self.optimize!r}"
            )
        object.__setattr__(self, "replicas", _replicas(self.replicas))

    @classmethod
    def parse(cls, value: Constraints | Mapping[str, Any] | Iterable[str] | None) -> Constraints:
        """A ``Constraints`` from itself, a dict, ``KEY=VALUE`` strings, or ``None`` (none).

        Raises:
            ConstraintError: an unknown key, or a value that is not accepted.
        """
        if value is None:
            return cls()
        if isinstance(value, Constraints):
            return value
        if isinstance(value, Mapping):
            return cls._from_mapping(value)
        if isinstance(value, str | bytes):
            return cls._from_mapping(_parse_pairs([str(value)]))
        return cls._from_mapping(_parse_pairs(list(value)))

    @classmethod
    def _from_mapping(cls, data: Mapping[str, Any]) -> Constraints:
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConstraintError(
                f"unknown constraint {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**{str(k): v for k, v in data.items()})

    @property
    def objective(self) -> str:
        """The objective ``optimize="auto"`` stands for with these limits."""
        if self.optimize != "auto":
            return self.optimize
        limited = (self.max_latency_ms, self.min_throughput, self.power_budget_watts)
        return "cost" if any(v is not None for v in limited) else "latency"

    @property
    def permits_low_precision(self) -> bool:
        """INT8 / FP16 / BF16 candidates are tried only under an explicit accuracy budget."""
        return bool(self.max_accuracy_drop)

    def limits(self) -> dict[str, float]:
        """The numeric limits that are set, by constraint name."""
        found = {
            name: getattr(self, name)
            for name in ("max_latency_ms", "min_throughput", "power_budget_watts", "max_memory_mb")
            if getattr(self, name) is not None
        }
        return found

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-ready (the deployment store's key records this).

        ``replicas`` appears only when asked for, so the keys of single-device deployments
        stored before it existed still match."""
        data: dict[str, Any] = {
            "max_latency_ms": self.max_latency_ms,
            "latency_percentile": self.latency_percentile,
            "min_throughput": self.min_throughput,
            "power_budget_watts": self.power_budget_watts,
            "max_memory_mb": self.max_memory_mb,
            "max_accuracy_drop": dict(sorted(self.max_accuracy_drop.items())),
            "preferred_hardware": list(self.preferred_hardware),
            "max_batch": self.max_batch,
            "optimize": self.optimize,
        }
        if self.replicas is not None:
            data["replicas"] = (
                list(self.replicas) if isinstance(self.replicas, tuple) else (self.replicas)
            )
        return data

    def describe(self) -> str:
        """One line: the limits that are set, as a user would write them."""
        parts = []
        if self.max_latency_ms is not None:
            parts.append(f"p{_pct(self.latency_percentile)} latency <= {self.max_latency_ms:g} ms")
        if self.min_throughput is not None:
            parts.append(f"throughput >= {self.min_throughput:g}/s")
        if self.power_budget_watts is not None:
            parts.append(f"power <= {self.power_budget_watts:g} W")
        if self.max_memory_mb is not None:
            parts.append(f"memory <= {self.max_memory_mb:g} MB")
        for metric, limit in sorted(self.max_accuracy_drop.items()):
            parts.append(f"{metric} drop <= {limit:g}")
        if self.preferred_hardware:
            parts.append("prefer " + " > ".join(self.preferred_hardware))
        if self.replicas is not None:
            what = ", ".join(self.replicas) if isinstance(self.replicas, tuple) else self.replicas
            parts.append(f"replicas {what}")
        return "; ".join(parts) or "none"


def _pct(value: float) -> str:
    return f"{value:g}"


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConstraintError(f"{name} must be a number, got {value!r}") from None
    number = float(value)
    if not math.isfinite(number):
        raise ConstraintError(f"{name} must be finite, got {value!r}")
    return number


def _positive(name: str, value: Any) -> float:
    number = _number(name, value)
    if number <= 0:
        raise ConstraintError(f"{name} must be positive, got {value!r}")
    return number


def _accuracy(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if isinstance(value, str):
        value = _parse_metric_list(value)
    if not isinstance(value, Mapping):
        raise ConstraintError(
            f"max_accuracy_drop must be a dict such as {{'cosine': 0.01}}, got {value!r}"
        )
    limits: dict[str, float] = {}
    for metric, limit in value.items():
        name = str(metric).strip().lower()
        if name not in ACCURACY_METRICS:
            raise ConstraintError(
                f"max_accuracy_drop: unknown metric {metric!r} "
                f"(metrics: {', '.join(ACCURACY_METRICS)})"
            )
        number = _number(f"max_accuracy_drop[{name}]", limit)
        if number < 0:
            raise ConstraintError(f"max_accuracy_drop[{name}] must be >= 0, got {limit!r}")
        limits[name] = number
    return limits


def _parse_metric_list(text: str) -> dict[str, Any]:
    """``cosine=0.01,top1=1`` or ``cosine:0.01`` -> ``{"cosine": "0.01", "top1": "1"}``."""
    found: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        sep = "=" if "=" in part else ":"
        metric, ok, limit = part.partition(sep)
        if not ok:
            raise ConstraintError(
                f"max_accuracy_drop {part!r}: expected METRIC=VALUE, e.g. cosine=0.01"
            )
        found[metric.strip()] = limit.strip()
    return found


def _hardware(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items: Sequence[Any] = (
        [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    )
    if not isinstance(items, Iterable):
        raise ConstraintError(f"preferred_hardware must be a list of names, got {value!r}")
    names: list[str] = []
    for item in items:
        name = normalise_hardware(item)
        if name is None:
            raise ConstraintError(
                f"preferred_hardware: unknown hardware {item!r} "
                f"(names: {', '.join(HARDWARE_NAMES)}, or CPU for the host CPU)"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _replicas(value: Any) -> str | int | tuple[str, ...] | None:
    """``None`` (or 1: one device), ``"auto"``, a count >= 2, or ``target:DEVICE`` keys."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto":
            return "auto"
        listed = [v.strip() for v in text.split(",") if v.strip()]
        value = int(text) if text.isdigit() else listed
    if isinstance(value, bool):
        raise ConstraintError(f"replicas must be 'auto', a number or device keys, got {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= MAX_REPLICAS:
            raise ConstraintError(f"replicas must be in 1..{MAX_REPLICAS}, got {value!r}")
        return None if value == 1 else value
    if not isinstance(value, Iterable):
        raise ConstraintError(f"replicas must be 'auto', a number or device keys, got {value!r}")
    keys: list[str] = []
    for item in value:
        target, sep, device = str(item).strip().partition(":")
        if not sep or not target or not device:
            raise ConstraintError(
                f"replicas: {item!r} is not a device key such as 'openvino:CPU' or 'cuda:0' "
                "(vmmc devices lists them)"
            )
        key = f"{target.lower()}:{device}"
        if key not in keys:
            keys.append(key)
    if not keys:
        raise ConstraintError("replicas: an empty device list (give 'auto', a number or keys)")
    return tuple(keys)


def _parse_pairs(items: Sequence[str]) -> dict[str, Any]:
    """``["max_latency_ms=20", "preferred_hardware=NVIDIA_GPU,CPU"]`` -> a dict of strings."""
    data: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConstraintError(
                f"constraint {item!r}: expected KEY=VALUE, e.g. max_latency_ms=20"
            )
        value = value.strip()
        if key == "max_accuracy_drop":
            merged = dict(data.get(key, {}))
            merged.update(_parse_metric_list(value))
            data[key] = merged
        elif key == "max_batch":
            try:
                data[key] = int(value)
            except ValueError:
                raise ConstraintError(f"max_batch must be an integer, got {value!r}") from None
        else:
            data[key] = value
    return data

"""Representative input shapes when the user gives no samples.

Every dynamic axis of the inputs becomes a *variable* (inputs that share a symbol share one).
Each variable gets a class from the input's layout and name:

- ``batch``: the leading axis of an input of rank >= 2 (or a symbol named like a batch);
- ``spatial``: H and W of an image-like rank-4 input (NCHW or NHWC with 1, 3 or 4 channels);
- ``sequence``: the axis after the batch of token ids, audio, frames or features;
- ``other``: anything else.

Sizes come, in this order, from ``--input`` ranges (a size is clipped into its range), from the
model's metadata (e.g. ``imgsz`` as Ultralytics writes it), and otherwise from a ladder of
common sizes per class. The first choice that the reference (ONNX Runtime on the original model)
can run becomes the *primary* shape: all axes at their first ladder size, then, where that fails,
every axis of a class together down its ladder, then each variable alone. A detector that needs
multiples of 32 runs at 224; an OCR recognizer that needs height 48 falls through to 48 and then
keeps the widest width that runs. Inputs that index, count or size something take values from
their domain (``ai_vmm.inputs.input_domains``).

Besides the primary shape, each class gets one more *bucket* where the model is dynamic in it
(a larger batch, a short sequence, a larger image), so the compile can time candidates at more
than one shape and dispatch by shape (docs/targets.md).

If the reference runs at no shape tried, ``ShapeChoice.failure`` names the input to give with
``--input`` or ``--sample``: the compile then goes on unverified, by the static rule, and never
blames a candidate for the reference's failure.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_vmm.inputs import Domain, synthetic_inputs
from ai_vmm.runtime.artifact import TensorSpec
from ai_vmm.runtime.errors import VmmError

Sample = dict[str, np.ndarray]
TryReference = Callable[[Sample], str | None]
"""Runs the reference on a sample: ``None`` when it ran, else the error in one line."""

LADDERS: dict[str, tuple[int, ...]] = {
    "batch": (1,),
    "spatial": (224, 320, 640, 256, 128, 64, 48, 32, 96, 160, 16),
    "sequence": (128, 64, 32, 256, 512, 16, 8, 1024, 1),
    "other": (16, 32, 64, 8, 128, 1, 4, 256, 512),
}
"""Sizes tried per class, the preferred (most representative) first."""
BUCKETS: dict[str, int] = {"batch": 8, "sequence": 8, "spatial": 640}
"""The second size each class is timed at where the model is dynamic in it."""
MAX_TRIALS = 24
TRIAL_BUDGET_S = 60.0

_BATCH_NAMES = re.compile(r"^(n|b|bs|batch([_ ]?size)?|.*batch.*|num_images|unk__0)$", re.I)
_SPATIAL_NAMES = re.compile(r"(height|width|^h$|^w$|^H$|^W$|img|image)", re.I)
_SEQUENCE_NAMES = re.compile(r"(seq|len|time|frame|token|sample|step|^t$|^L$)", re.I)


@dataclass(frozen=True)
class Variable:
    """One dynamic size: every (input, axis) that shares it, its class and allowed range."""

    name: str
    cls: str
    axes: tuple[tuple[str, int], ...]
    low: int = 1
    high: int | None = None

    def fits(self, size: int) -> bool:
        return size >= self.low and (self.high is None or size <= self.high)


@dataclass
class Bucket:
    """One representative shape: a sample at it, and the variable sizes that define it."""

    name: str
    sizes: dict[str, int]
    sample: Sample
    varied: str | None = None
    """The variable this bucket differs from the primary in (``None`` for the primary)."""


@dataclass
class ShapeChoice:
    """The primary shape, the extra buckets, and how they were found."""

    variables: list[Variable]
    primary: Bucket | None
    buckets: list[Bucket] = field(default_factory=list)
    tried: list[dict[str, Any]] = field(default_factory=list)
    source: str = "synthetic"
    failure: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "variables": [
                {"name": v.name, "class": v.cls, "axes": [list(a) for a in v.axes]}
                for v in self.variables
            ],
            "primary": self.primary.sizes if self.primary else None,
            "buckets": [{"name": b.name, "sizes": b.sizes} for b in self.buckets],
            "tried": self.tried[-MAX_TRIALS:],
            **({"failure": self.failure} if self.failure else {}),
        }


def dynamic_variables(specs: tuple[TensorSpec, ...]) -> list[Variable]:
    """The dynamic axes of ``specs`` as variables (shared symbols merged)."""
    found: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.kind != "tensor" or spec.shape is None:
            continue
        rank = len(spec.shape)
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and dim >= 0:
                continue
            low, high = 1, None
            if isinstance(dim, dict):
                low, high = int(dim.get("min", 1)), dim.get("max")
                key = f"{spec.name}[{axis}]"
            elif isinstance(dim, str) and dim:
                key = dim
            else:
                key = f"{spec.name}[{axis}]"
            entry = found.setdefault(
                key, {"axes": [], "cls": _classify(spec, axis, rank, key), "low": 1, "high": None}
            )
            entry["axes"].append((spec.name, axis))
            entry["low"] = max(entry["low"], max(low, 0))
            if high is not None and int(high) >= 0:
                entry["high"] = int(high) if entry["high"] is None else min(entry["high"], high)
    return [
        Variable(name, e["cls"], tuple(e["axes"]), e["low"], e["high"]) for name, e in found.items()
    ]


def _classify(spec: TensorSpec, axis: int, rank: int, symbol: str) -> str:
    shape = spec.shape or ()
    kind = np.dtype(spec.dtype).kind if _is_dtype(spec.dtype) else "?"
    if _SEQUENCE_NAMES.search(symbol) and not _BATCH_NAMES.match(symbol):
        # A leading axis named like a sequence (an LSTM over ``sequence_length`` chunks with
        # its own state) is a sequence, whatever its position.
        return "sequence"
    if axis == 0 and (rank >= 2 or _BATCH_NAMES.match(symbol)):
        return "batch"
    if rank == 4:
        channels_first = isinstance(shape[1], int) and shape[1] in (1, 2, 3, 4)
        channels_last = isinstance(shape[3], int) and shape[3] in (1, 2, 3, 4)
        if (channels_first and axis in (2, 3)) or (channels_last and axis in (1, 2)):
            return "spatial"
        if _SPATIAL_NAMES.search(symbol) and axis >= 1:
            return "spatial"
    if _SPATIAL_NAMES.search(symbol) and rank >= 3:
        return "spatial"
    if axis == 1 and rank in (2, 3) and kind in "iuf":
        return "sequence"
    if _SEQUENCE_NAMES.search(symbol):
        return "sequence"
    return "other"


def _is_dtype(name: str) -> bool:
    try:
        np.dtype(name)
    except TypeError:
        return False
    return bool(name)


def metadata_sizes(metadata: Mapping[str, str], variables: list[Variable]) -> dict[str, int]:
    """Sizes the model's own metadata states: ``imgsz`` (Ultralytics), ``input_size``, ..."""
    sizes: dict[str, int] = {}
    spatial = [v for v in variables if v.cls == "spatial"]
    for key in ("imgsz", "img_size", "image_size", "input_size", "input_shape"):
        raw = metadata.get(key)
        if raw is None or not spatial:
            continue
        numbers = [int(n) for n in re.findall(r"\d+", str(raw))]
        if not numbers:
            continue
        # [h, w], a single size, or a full NCHW shape: keep the trailing spatial pair.
        pair = numbers[-2:] if len(numbers) >= 2 else numbers * 2
        ordered = sorted(spatial, key=lambda v: v.axes[0][1])
        for variable, size in zip(ordered[-2:], pair, strict=False):
            if size > 0:
                sizes[variable.name] = size
        break
    batch = metadata.get("batch")
    if batch is not None and str(batch).isdigit():
        for variable in variables:
            if variable.cls == "batch" and int(batch) > 0:
                sizes[variable.name] = int(batch)
    return sizes


def choose_shapes(
    specs: tuple[TensorSpec, ...],
    domains: Mapping[str, Domain],
    try_reference: TryReference | None,
    metadata: Mapping[str, str] | None = None,
) -> ShapeChoice:
    """Find shapes the reference runs at: the primary one, and one more per dynamic class.

    Without a reference (``--no-verify`` or a model ONNX Runtime cannot load), the first choice
    is taken as it is.
    """
    variables = dynamic_variables(specs)
    choice = ShapeChoice(variables, None)
    stated = metadata_sizes(metadata or {}, variables)
    if stated:
        choice.source = f"synthetic, sizes from the model's metadata ({json.dumps(stated)})"

    def make(sizes: dict[str, int], name: str, varied: str | None = None) -> Bucket | None:
        sample = sample_at(specs, variables, sizes, domains)
        if sample is None:
            return None
        return Bucket(name, dict(sizes), sample, varied)

    def runs(sizes: dict[str, int]) -> Bucket | None:
        try:
            bucket = make(sizes, "primary")
        except VmmError as exc:  # too large to make: a trial that failed, with the reason
            choice.tried.append({"sizes": dict(sizes), "error": str(exc)})
            return None
        if bucket is None:
            return None
        if try_reference is None:
            return bucket
        error = try_reference(bucket.sample)
        choice.tried.append({"sizes": dict(sizes), "error": error})
        return bucket if error is None else None

    first = {v.name: stated.get(v.name) or first_fit(v) for v in variables}
    deadline = time.monotonic() + TRIAL_BUDGET_S
    primary = runs(first)
    if primary is None and try_reference is not None:
        primary = _search(variables, first, runs, deadline)
    if primary is None:
        if try_reference is None:
            choice.failure = "the model has non-tensor inputs: no synthetic sample"
            return choice
        choice.failure = _failure_text(variables, specs, choice.tried)
        return choice
    choice.primary = primary
    # One more bucket per class the model is dynamic in (a larger batch, a short sequence...).
    for cls, size in BUCKETS.items():
        group = [v for v in variables if v.cls == cls]
        if not group or all(primary.sizes[v.name] == size for v in group):
            continue
        sizes = dict(primary.sizes)
        for variable in group:
            if variable.fits(size):
                sizes[variable.name] = size
        if sizes == primary.sizes or time.monotonic() > deadline:
            continue
        bucket = runs(sizes)
        if bucket is not None:
            bucket.name, bucket.varied = f"{cls}={size}", cls
            choice.buckets.append(bucket)
    return choice


def first_fit(variable: Variable) -> int:
    for size in LADDERS[variable.cls]:
        if variable.fits(size):
            return size
    return variable.low if variable.high is None else min(max(variable.low, 1), variable.high)


def _search(
    variables: list[Variable],
    start: dict[str, int],
    runs: Callable[[dict[str, int]], Bucket | None],
    deadline: float,
) -> Bucket | None:
    """Down each class's ladder together, then each variable alone; then widen what allows it."""
    trials = 1
    found: Bucket | None = None
    current = dict(start)
    for cls in ("spatial", "sequence", "other", "batch"):
        group = [v for v in variables if v.cls == cls]
        if not group:
            continue
        for size in LADDERS[cls][1:]:
            if trials >= MAX_TRIALS or time.monotonic() > deadline:
                return None
            sizes = {**current, **{v.name: size for v in group if v.fits(size)}}
            if sizes == current:
                continue
            trials += 1
            found = runs(sizes)
            if found is not None:
                current = sizes
                break
        if found is not None:
            break
    if found is None:
        # Classes together failed: each variable alone, the others at their first size.
        for variable in variables:
            for size in LADDERS[variable.cls][1:]:
                if trials >= MAX_TRIALS or time.monotonic() > deadline:
                    return None
                if not variable.fits(size):
                    continue
                trials += 1
                found = runs({**start, variable.name: size})
                if found is not None:
                    current = found.sizes
                    break
            if found is not None:
                break
    if found is None:
        return None
    # Widen: each variable back up to the most representative size the model still runs at
    # (an OCR recognizer: height falls to 48, width climbs back to 224).
    for variable in variables:
        for size in LADDERS[variable.cls]:
            if size <= current[variable.name] or not variable.fits(size):
                continue
            if trials >= MAX_TRIALS or time.monotonic() > deadline:
                return found
            trials += 1
            wider = runs({**current, variable.name: size})
            if wider is not None:
                found, current = wider, wider.sizes
                break
    return found


def sample_at(
    specs: tuple[TensorSpec, ...],
    variables: list[Variable],
    sizes: dict[str, int],
    domains: Mapping[str, Domain],
) -> Sample | None:
    at = {(name, axis): sizes[v.name] for v in variables for name, axis in v.axes}
    concrete = []
    for spec in specs:
        if spec.shape is None:
            concrete.append(spec)
            continue
        shape = tuple(
            at.get((spec.name, axis), dim if isinstance(dim, int) and dim >= 0 else 1)
            for axis, dim in enumerate(spec.shape)
        )
        concrete.append(TensorSpec(spec.name, spec.dtype, shape, spec.kind))
    return synthetic_inputs(tuple(concrete), domains)


def _failure_text(
    variables: list[Variable], specs: tuple[TensorSpec, ...], tried: list[dict[str, Any]]
) -> str:
    names = sorted({name for v in variables for name, _ in v.axes}) or [
        s.name for s in specs if s.kind == "tensor"
    ]
    last = next((t["error"] for t in reversed(tried) if t.get("error")), "")
    shapes = ", ".join(f"{s.name}{list(s.shape) if s.shape else '[?]'}" for s in specs[:4])
    return (
        f"ONNX Runtime could not run the original model on any of {len(tried)} synthetic input "
        f"shape(s) tried ({shapes}); give real inputs with --sample FILE.npz or fix the shape "
        f"of {', '.join(names[:3])} with --input NAME[SHAPE]"
        + (f" (last error: {last[:200]})" if last else "")
    )

"""The compiled candidates of a search: one artifact per (device, precision), through compile.

The space is what ``ai_vmm.compile`` already offers:

| device | always | with ``max_accuracy_drop`` (and real samples for static INT8) |
|---|---|---|
| ``openvino:CPU`` | fp32 | int8 (NNCF, calibrated on the samples), bf16 / fp16 (ISA permitting) |
| ``onnxruntime:CPU`` | fp32 | int8 (static Q/DQ, calibrated), int8-dynamic |
| ``cuda:N`` | fp32 | fp16, bf16 (compute capability 8.0 and later) |
| ``tensorrt:N``, ``openvino:GPU``, ``openvino:NPU`` | fp32 | fp16 |

When a device cannot compile the model on its own, a partition plan over every device (in
preference order: compile's planner places each node, docs/partitioning.md) is compiled in
fp32 and measured like any other candidate.

Each is compiled with ``tune=False`` (the search measures for itself) into the deployment
store, keyed by model hash + hardware fingerprint + options, so it is compiled once per machine.
Every build's accuracy is measured on the held-out samples against the reference (ONNX Runtime
on the original model, optimizations off), and the accuracy budget is judged there, like every
other constraint. By default compile's own accuracy gate is left open (``OPEN_GATE``): its
restoration (keeping the most sensitive layers in float until the gate passes) can take many
minutes (ONNX Runtime's sensitivity search compiles the model once per layer). With
``restore_accuracy`` the user's budget goes to compile's gate instead, which may then keep
layers float, or keep the whole build float (dropped, with compile's reason).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.deploy.samples import Samples
from ai_vmm.deploy.store import digest
from ai_vmm.runtime.devices import CpuInfo, Device
from ai_vmm.runtime.errors import VmmError

Say = Callable[[str], None]
PRECISION_ORDER = ("fp32", "bf16", "fp16", "int8-dynamic", "int8")
"""Fidelity order: among otherwise equal candidates the earlier precision wins."""
ACCURACY_SAMPLES = 64
OPEN_GATE = {"cosine": 2.0}
"""A limit compile's accuracy gate always passes (a cosine drop is at most 2)."""


@dataclass(frozen=True)
class BuildSpec:
    """One artifact to compile: a device (or a partition plan over devices) and a precision."""

    device: Device
    hardware: str
    precision: str
    plan: tuple[str, ...] = ()
    """For a partition plan: every device key, in priority order (``device`` is the first)."""

    @property
    def target(self) -> str:
        """What ``ai_vmm.compile`` gets as ``target``."""
        return ",".join(self.plan) if self.plan else self.device.key

    @property
    def id(self) -> str:
        if self.plan:
            return f"plan {'+'.join(self.plan)} {self.precision}"
        return f"{self.device.key} {self.precision}"


@dataclass
class Build:
    """A compiled candidate (or why there is none)."""

    spec: BuildSpec
    path: Path | None = None
    status: str = "pending"
    """``built``, ``reused`` (found in the store), ``failed``, ``refused``, ``skipped``."""
    reason: str = ""
    seconds: float = 0.0
    accuracy: dict[str, Any] | None = None
    devices: list[str] = field(default_factory=list)
    """The devices of the artifact's partitions."""

    @property
    def usable(self) -> bool:
        return self.status in ("built", "reused") and self.path is not None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.spec.id,
            "device": self.spec.device.key,
            "hardware": self.spec.hardware,
            "precision": self.spec.precision,
            "status": self.status,
            "compile_s": round(self.seconds, 2),
        }
        if self.reason:
            data["reason"] = self.reason
        if self.accuracy is not None:
            data["accuracy"] = self.accuracy
        if self.path is not None:
            data["artifact"] = str(self.path)
        return data


def plan_builds(
    devices: Sequence[tuple[Device, str]],
    cpu: CpuInfo,
    *,
    low_precision: bool,
    real_samples: bool,
    cpu_precisions: Sequence[str],
) -> tuple[list[BuildSpec], list[str]]:
    """Every (device, precision) to compile, and notes on what was left out and why."""
    specs: list[BuildSpec] = []
    notes: list[str] = []
    for device, hardware in devices:
        specs.append(BuildSpec(device, hardware, "fp32"))
        if not low_precision:
            continue
        for precision in _low_precisions(device, cpu_precisions):
            if precision == "int8" and not real_samples:
                notes.append(
                    f"{device.key} int8 not tried: static INT8 calibrates on the samples; "
                    "give real samples= to try it"
                )
                continue
            specs.append(BuildSpec(device, hardware, precision))
    if not low_precision:
        notes.append("only fp32 tried: give max_accuracy_drop to permit INT8 / FP16 / BF16")
    return specs, notes


def _low_precisions(device: Device, cpu_precisions: Sequence[str]) -> list[str]:
    if device.kind == "cpu":
        found = ["int8"]
        if device.target == "onnxruntime":
            found.append("int8-dynamic")
        if device.target == "openvino":
            found += [p for p in ("bf16", "fp16") if p in cpu_precisions]
        return found
    if device.target == "cuda":
        capability = str(device.properties.get("compute_capability", "0.0"))
        major = int(capability.split(".")[0]) if capability.split(".")[0].isdigit() else 0
        return ["fp16", "bf16"] if major >= 8 else ["fp16"]
    return ["fp16"]


def compile_options(spec: BuildSpec, samples: Samples, limits: dict[str, float]) -> dict[str, Any]:
    """The ``ai_vmm.compile`` keyword arguments of a build."""
    options: dict[str, Any] = {"tune": False}
    if spec.precision in ("fp16", "bf16"):
        options |= {"precision": spec.precision, "force_quantize": True}
    elif spec.precision == "int8":
        options |= {
            "quantize": "int8",
            "calibration": list(samples.items),
            "max_accuracy_drop": dict(limits),
            "force_quantize": True,
        }
    elif spec.precision == "int8-dynamic":
        options |= {
            "quantize": "int8-dynamic",
            "max_accuracy_drop": dict(limits),
            "force_quantize": True,
        }
    return options


def build_one(
    spec: BuildSpec,
    source: Path,
    out_dir: Path,
    samples: Samples | None,
    limits: dict[str, float],
    say: Say,
    *,
    raw_samples: Any = None,
    raw_digest: str = "",
) -> Build:
    """Compile ``spec`` into ``out_dir`` (reusing an intact earlier build).

    ``raw_samples`` (the user's, as given) go to ``ai_vmm.compile(samples=...)`` where compile
    takes them (verification and timing on real inputs); the key records their digest.
    """
    import ai_vmm
    from ai_vmm.runtime.artifact import is_artifact

    options = compile_options(spec, samples, limits) if samples is not None else {"tune": False}
    key_options: dict[str, Any] = {k: v for k, v in options.items() if k != "calibration"}
    if "calibration" in options and samples is not None:
        key_options["calibration"] = samples.digest
    takes_samples = "samples" in inspect.signature(ai_vmm.compile).parameters
    if raw_samples is not None and takes_samples:
        options["samples"] = raw_samples
        key_options["samples"] = raw_digest
    name = f"{_safe(spec.target)}-{spec.precision}-{digest(key_options)[:10]}.vmm"
    path = out_dir / name
    build = Build(spec)
    if is_artifact(path):
        build.path, build.status = path, "reused"
        return describe_partitions(build)
    say(f"compiling {spec.id}")
    started = time.perf_counter()
    try:
        result = ai_vmm.compile(source, spec.target, path, **options)
    except VmmError as exc:
        build.status, build.reason = "failed", str(exc)
        build.seconds = time.perf_counter() - started
        return build
    except Exception as exc:  # a backend's own exception: one line, the search goes on
        build.status = "failed"
        build.reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        build.seconds = time.perf_counter() - started
        return build
    build.seconds = time.perf_counter() - started
    quantization = result.report.get("quantization") or {}
    if spec.precision != "fp32" and quantization.get("decision") == "float":
        build.status = "refused"
        build.reason = f"compile kept float: {quantization.get('reason', 'no reason given')}"
        return build
    build.path, build.status = path, "built"
    return describe_partitions(build)


def describe_partitions(build: Build) -> Build:
    from ai_vmm.runtime.artifact import read_manifest

    assert build.path is not None
    manifest = read_manifest(build.path)
    build.devices = sorted({f"{p.target}:{p.device}" for p in manifest.partitions})
    return build


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def held_out(samples: Samples) -> list[dict[str, np.ndarray]]:
    """The last quarter of the samples (at least one): what static INT8 never calibrated on."""
    items = list(samples.items)
    count = max(1, len(items) // 4)
    return items[len(items) - count :][:ACCURACY_SAMPLES]


def measure_accuracy(
    build: Build,
    reference: Sequence[dict[str, Any]] | None,
    feeds: Sequence[dict[str, np.ndarray]],
) -> dict[str, Any] | None:
    """Metrics and drops of ``build``'s outputs against ``reference`` on ``feeds``."""
    from ai_vmm.accuracy import compare_outputs, drops
    from ai_vmm.runtime import load

    if reference is None or build.path is None:
        return None
    with load(build.path) as model:
        got = [model.run(feed) for feed in feeds]
        names = tuple(spec.name for spec in model.outputs)
    compared = compare_outputs(reference, got, names)
    metrics = {
        k: round(v, 6) if isinstance(v, float) else v for k, v in compared["overall"].items()
    }
    return {"metrics": metrics, "drops": {k: round(v, 6) for k, v in drops(metrics).items()}}


def reference_outputs(
    source: Path | None, output_names: tuple[str, ...], feeds: Sequence[dict[str, np.ndarray]]
) -> tuple[list[dict[str, Any]] | None, str]:
    """ONNX Runtime on the original ONNX model (optimizations off), or why there is none."""
    from ai_vmm.runtime.executors import create_executor

    if source is None:
        return None, "no ONNX source to run"
    try:
        executor = create_executor(
            "onnxruntime", source, "CPU", {"graph_optimization_level": "disable"}, output_names
        )
        return [executor.run(dict(feed)) for feed in feeds], "ONNX Runtime on the original model"
    except VmmError as exc:
        return None, f"ONNX Runtime cannot run the original model: {exc}"


def precision_rank(precision: str) -> int:
    return (
        PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER)
    )


def artifact_build(path: Path, inventory: Any) -> tuple[Build, str]:
    """An existing artifact as a build (deployed as compiled), and its manifest's kind."""
    from ai_vmm.deploy.hardware import device_class
    from ai_vmm.runtime import load
    from ai_vmm.runtime.artifact import read_manifest

    if path.is_dir():
        manifest = read_manifest(path)
    else:
        with load(path) as loaded:  # a zip: its manifest, validated
            manifest = loaded.manifest
    part = manifest.partitions[0]
    options = manifest.compile_options
    quantization = options.get("quantization") or {}
    precision = str(
        quantization.get("quantize")
        or quantization.get("weights")
        or options.get("weights")
        or options.get("precision")
        or "fp32"
    )
    kind = "cpu" if part.device.upper().startswith("CPU") else "gpu"
    device = inventory.find(part.target, part.device) or Device(part.target, part.device, kind)
    spec = BuildSpec(device, device_class(device, inventory.cpu), precision)
    build = Build(spec, path, "reused", reason="deployed as compiled")
    build.devices = sorted({f"{p.target}:{p.device}" for p in manifest.partitions})
    return build, manifest.kind

"""Artifacts for the parallel benchmark: a throughput plan across devices, one artifact per device.

``pipelined_artifact`` plans a model over several devices with the planner's throughput
objective (``ai_vmm.planner.plan(..., objective="throughput")``) and writes the partitioned
artifact; ``single_artifact`` compiles the whole model for one device. Until the driver takes an
objective (``vmmc compile --target a,b --objective throughput``), the first repeats what the
driver's partitioned compile does (canonicalize, fuse for every target, capability, figures,
plan, outline, codegen) with the throughput objective, through the compiler's own functions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import ai_vmm
from ai_vmm import hardware, registry
from ai_vmm.cost import DeviceFigures, device_figures
from ai_vmm.driver import CompileOptions
from ai_vmm.frontends import load_model
from ai_vmm.fusion_stage import fuse_for_all
from ai_vmm.partition import build_plan, capabilities, measured_links, plan_graph, sample_dims
from ai_vmm.passes.analyze import analyze
from ai_vmm.passes.canonicalize import canonicalize
from ai_vmm.passes.recipes import choose_recipe
from ai_vmm.planner import plan
from ai_vmm.runtime.artifact import Manifest, write_artifact
from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.executors import create_executor
from ai_vmm.runtime.model import CompiledModel, executor_config
from ai_vmm.runtime.pipelined import stage_threads, thread_config
from ai_vmm.signature import model_signature
from ai_vmm.targets.base import TargetOptions


def find_devices(keys: list[str]) -> list[Device]:
    """The present devices named ``target:NAME`` (a one-line error for an absent one)."""
    inventory = hardware.discover(registry.discoverers())
    devices = []
    for key in keys:
        target, _, name = key.partition(":")
        device = inventory.find(target, name or None)
        if device is None:
            present = ", ".join(d.key for d in inventory.devices)
            raise SystemExit(f"device {key} is not present here (present: {present})")
        devices.append(device)
    return devices


def pipelined_artifact(
    source: Path,
    device_keys: list[str],
    out: Path,
    sample: dict[str, np.ndarray],
    objective: str = "throughput",
    calibrate: int = 1,
) -> dict[str, Any]:
    """Plan ``source`` over ``device_keys`` for ``objective`` and write the artifact to ``out``.

    ``calibrate``: rounds of learning from measurement. After a build, each partition runs
    alone (with the pipeline's threads) and every device's figures are scaled by its measured
    stage time over the cost model's estimate; then the model is planned and built again. The
    roofline prices a device's work from a MatMul and an Add; how fast a device runs this
    model's own nodes is what the stage times say.

    Returns the plan's summary (partitions, devices, estimated loads per device, the factors
    each calibration round applied).
    """
    devices = find_devices(device_keys)
    present = {d.key for d in devices}
    model = load_model(source).model
    canonicalize(model)
    try:
        recipe = choose_recipe(analyze(model))
    except Exception:
        recipe = "default"
    model, _ = fuse_for_all(model, recipe, devices, CompileOptions())
    support, _ = capabilities(model, devices, None, present)
    figures = {d.key: device_figures(d) for d in devices}
    dims = sample_dims(model, sample)
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": dims})
    factors: list[dict[str, float]] = []
    for round_ in range(calibrate + 1):
        links = measured_links(devices, figures)
        graph = plan_graph(model, devices, support, figures, links, dims, "fp32")
        result = plan(graph, objective=objective)
        with tempfile.TemporaryDirectory(prefix="ai-vmm-pipeline-") as tmp:
            build = build_plan(model, result, devices, present, options, Path(tmp), lambda m: None)
            inputs, outputs = model_signature(model)
            manifest = Manifest(inputs, outputs, tuple(build.partitions), {}, {}, {})
            report = {"plan": {"objective": objective, "calibration": factors, **build.report}}
            write_artifact(out, manifest, report, build.payload_dirs)
        if round_ == calibrate:
            break
        measured = stage_seconds(out, sample)
        scale = {}
        for key in figures:
            estimate = result.breakdown.get(f"load {key}", 0.0)
            if measured.get(key) and estimate > 0:
                scale[key] = measured[key] / estimate
        factors.append({k: round(v, 3) for k, v in scale.items()})
        figures = {k: _scaled(f, scale.get(k, 1.0)) for k, f in figures.items()}
    return {
        "partitions": [
            {"id": p.id, "device": f"{p.target}:{p.device}", "nodes": len(g)}
            for p, g in zip(build.partitions, result.groups, strict=True)
        ],
        "estimate_ms": {k: round(v * 1000, 4) for k, v in result.breakdown.items()},
        "calibration": factors,
    }


def _scaled(figures: DeviceFigures, factor: float) -> DeviceFigures:
    """``figures`` for a device ``factor`` times slower than they said (overhead kept)."""
    return DeviceFigures(
        peak_gflops={k: v / factor for k, v in figures.peak_gflops.items()},
        bandwidth_gbps=figures.bandwidth_gbps / factor,
        overhead_us=figures.overhead_us,
        source=f"{figures.source}, scaled x{factor:.2f} by measured stage times",
        link_gbps=figures.link_gbps,
    )


def pinned_model(path: Path) -> CompiledModel:
    """The artifact as ``ai_vmm.runtime.load`` runs it (one request at a time), with the thread
    counts the pipelined runner gives its CPU stages (``stage_threads(..., "auto")``)."""
    loaded = ai_vmm.runtime.load(path)
    manifest = loaded.manifest
    counts = stage_threads(manifest, "auto")
    executors = {
        p.id: create_executor(
            p.target,
            loaded.root / p.entry,
            p.device,
            thread_config(executor_config(manifest, p), p, counts.get(p.id)),
            p.outputs,
        )
        for p in manifest.partitions
    }
    return CompiledModel(loaded.root, manifest, executors)


def load_with_threads(path: Path, threads: int | None) -> CompiledModel:
    """The artifact with ``threads`` intra-op threads on each CPU partition (``None``: as built)."""
    loaded = ai_vmm.runtime.load(path)
    if threads is None:
        return loaded
    manifest = loaded.manifest
    executors = {
        p.id: create_executor(
            p.target,
            loaded.root / p.entry,
            p.device,
            thread_config(executor_config(manifest, p), p, threads if p.device == "CPU" else None),
            p.outputs,
        )
        for p in manifest.partitions
    }
    return CompiledModel(loaded.root, manifest, executors)


def stage_seconds(path: Path, sample: dict[str, np.ndarray], runs: int = 20) -> dict[str, float]:
    """Seconds per call of each device's partitions, each partition alone (pipeline threads),
    the median of ``runs`` calls."""
    model = pinned_model(path)
    per_part: dict[str, list[float]] = {}
    model.run(sample)
    for _ in range(runs):
        for part, seconds in model.run_profiled(sample)[1]:
            per_part.setdefault(part, []).append(seconds)
    device_of = {p.id: f"{p.target}:{p.device}" for p in model.partitions}
    totals: dict[str, float] = {}
    for part, values in per_part.items():
        totals[device_of[part]] = totals.get(device_of[part], 0.0) + float(np.median(values))
    return totals


def single_artifact(source: Path, device_key: str, out: Path, **options: Any) -> Path:
    """The whole model compiled for one device (``ai_vmm.compile``, no tuning by default)."""
    options.setdefault("tune", False)
    return Path(ai_vmm.compile(source, device_key, out, force=True, **options).path)

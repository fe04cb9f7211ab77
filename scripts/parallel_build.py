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
from ai_vmm.cost import device_figures
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
) -> dict[str, Any]:
    """Plan ``source`` over ``device_keys`` for ``objective`` and write the artifact to ``out``.

    Returns the plan's summary (partitions, devices, estimated loads per device).
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
    graph = plan_graph(
        model, devices, support, figures, measured_links(devices, figures), dims, "fp32"
    )
    result = plan(graph, objective=objective)
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": dims})
    with tempfile.TemporaryDirectory(prefix="ai-vmm-pipeline-") as tmp:
        build = build_plan(model, result, devices, present, options, Path(tmp), lambda m: None)
        inputs, outputs = model_signature(model)
        manifest = Manifest(inputs, outputs, tuple(build.partitions), {}, {}, {})
        report = {"plan": {"objective": objective, **build.report}}
        write_artifact(out, manifest, report, build.payload_dirs)
    return {
        "partitions": [
            {"id": p.id, "device": f"{p.target}:{p.device}", "nodes": len(g)}
            for p, g in zip(build.partitions, result.groups, strict=True)
        ],
        "estimate_ms": {k: round(v * 1000, 4) for k, v in result.breakdown.items()},
    }


def single_artifact(source: Path, device_key: str, out: Path, **options: Any) -> Path:
    """The whole model compiled for one device (``ai_vmm.compile``, no tuning by default)."""
    options.setdefault("tune", False)
    return Path(ai_vmm.compile(source, device_key, out, force=True, **options).path)

"""Building the candidates: which plans to build, estimate-first skips, verification.

For ``auto`` (no priority list, no hardware profile): a one-partition candidate per device
(``--no-tune``: in the static order, up to the first that verifies), and a split across
devices when none runs every node. A priority list or a hardware profile: the split alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm import gates, registry
from ai_vmm.candidates import Candidate, build_single, build_split, static_order
from ai_vmm.cost import device_figures, node_seconds
from ai_vmm.hardware_profile import HardwareProfile
from ai_vmm.options import CompileOptions
from ai_vmm.passes.concrete_shapes import dims_from_shapes
from ai_vmm.reference import Reference
from ai_vmm.representative import Inputs
from ai_vmm.runtime.devices import Device, Inventory
from ai_vmm.runtime.errors import CompileError, UnsupportedModelError, VmmError
from ai_vmm.special_values import check_special_values
from ai_vmm.targets.base import TargetOptions

Progress = Callable[[str], None]


@dataclass
class Machine:
    """Where the artifact will run: this machine, or one a hardware profile describes."""

    inventory: Inventory
    profile: HardwareProfile | None
    present: set[str]
    """Device keys present here (none when planning for a profile)."""


def build_candidates(
    model: ir.Model,
    recipe: str,
    devices: list[Device],
    target_options: TargetOptions,
    options: CompileOptions,
    machine: Machine,
    inputs: Inputs,
    expected: list[dict[str, Any]] | None,
    reference: Reference,
    work: Path,
    say: Progress,
) -> list[Candidate]:
    """Build and verify the candidates (see the module docstring for which ones)."""
    explicit = options.target.strip() not in ("", "auto") and len(devices) > 1
    common = {"target_options": target_options, "options": options, "work": work, "say": say}
    built: list[Candidate] = []
    if not explicit and machine.profile is None:
        ordered = devices if options.tune else static_order(devices)
        for index, device in enumerate(ordered):
            if not options.tune and any(c.status == "ok" for c in built):
                skipped = Candidate(device.key, [device], status="not built")
                skipped.reason = "--no-tune: the static rule chose an earlier candidate"
                built.append(skipped)
                continue
            skip = cannot_win(model, device, devices, inputs, target_options.precision, say)
            if skip:
                built.append(Candidate(device.key, [device], status="not built", reason=skip))
                continue
            candidate = build_single(model, recipe, device, index, **common)  # type: ignore[arg-type]
            _verify(candidate, inputs, expected, reference, options, say)
            alternative = registry.get_target(device.target).alternative_options(target_options)
            if candidate.status == "mismatch" and alternative is not None:
                say(f"[{device.key}] {candidate.reason}: trying the target's other build route")
                retry = build_single(
                    model,
                    recipe,
                    device,
                    index + len(devices),
                    alternative,
                    options,
                    work,
                    say,
                )
                _verify(retry, inputs, expected, reference, options, say)
                if retry.status == "ok":
                    retry.reason = f"first route failed verification ({candidate.reason})"
                    candidate = retry
            built.append(candidate)
        if any(c.status == "ok" for c in built) or len(devices) < 2:
            return built
        nowhere = set.intersection(*(set(c.unsupported) for c in built))
        if nowhere and all(c.status == "unsupported" for c in built):
            return built  # some node runs nowhere: splitting cannot help
        say("no single device runs the model: planning partitions")
    split = build_split(
        model,
        recipe,
        devices,
        priority=explicit,
        profile=machine.profile,
        present=machine.present,
        sample=inputs.primary,
        **common,  # type: ignore[arg-type]
    )
    built.append(split)
    if split.status == "built" and split.deferred:
        split.status = "ok"
        split.verification = {
            "status": "skipped",
            "reason": "planned for devices that are not present",
        }
    else:
        _verify(split, inputs, expected, reference, options, say)
    return built


ESTIMATE_MARGIN = 1.5
"""An expensive candidate is skipped only when its (optimistic) estimate is this much slower
than the best other device's at every bucket."""


def cannot_win(
    model: ir.Model,
    device: Device,
    devices: list[Device],
    inputs: Inputs,
    precision: str,
    say: Progress,
) -> str | None:
    """Why ``device`` need not be built: estimate first, build second.

    Only for targets whose payloads take minutes to build (``builds_on_device_only``: cuda's
    AOTInductor packages) and that estimate themselves; the others are compared by the cost
    model's roofline on their measured figures, at every timing bucket.
    """
    target = registry.get_target(device.target)
    others = [d for d in devices if d.key != device.key and d.kind == "cpu"]
    if not target.builds_on_device_only or not others or not inputs.buckets:
        return None
    rows = []
    for bucket in inputs.buckets:
        shapes = {name: np.shape(array) for name, array in bucket.sample.items()}
        dims = dims_from_shapes(list(model.graph.inputs), shapes)
        try:
            ours = target.estimate(model, device, dims)
        except Exception:  # an estimate is advice: without one, build and measure
            return None
        if ours is None:
            return None
        theirs = min(_roofline(model, other, dims, precision) for other in others)
        rows.append((bucket.name, ours, theirs))
    if all(ours > ESTIMATE_MARGIN * theirs for _, ours, theirs in rows):
        detail = ", ".join(f"{n}: {o * 1e3:.3g} ms vs {t * 1e3:.3g} ms" for n, o, t in rows)
        say(f"[{device.key}] not built: estimated slower than the CPU at every bucket ({detail})")
        return f"estimated slower than the host CPU at every shape bucket ({detail}); not built"
    return None


def _roofline(model: ir.Model, device: Device, dims: dict[str, int], precision: str) -> float:
    figures = device_figures(device)
    nodes = sum(node_seconds(node, figures, dims, precision) for node in model.graph)
    return nodes + figures.overhead_us * 1e-6


def _verify(
    candidate: Candidate,
    inputs: Inputs,
    expected: list[dict[str, Any]] | None,
    reference: Reference,
    options: CompileOptions,
    say: Progress,
) -> None:
    if candidate.status != "built":
        return
    candidate.status = "ok"
    if expected is None:
        return
    say(f"[{candidate.name}] verifying against the reference")
    candidate.verification = gates.verify(
        candidate, inputs.verify, expected, options.tolerance, inputs.description
    )
    if not candidate.verification["passed"]:
        candidate.status = "mismatch"
        candidate.reason = gates.mismatch_reason(candidate.verification)
        return
    # NaN and infinity: tolerance checks on ordinary samples never feed them.
    names = set(expected[0])
    candidate.verification["special_values"] = check_special_values(
        reference.outputs,
        lambda feed: {k: v for k, v in candidate.run(feed).items() if k in names},
        inputs.verify[0],
    )


def no_candidate_error(built: list[Candidate]) -> VmmError:
    """Why nothing can be written: nodes no device runs, or every candidate failed."""
    unsupported = [c for c in built if c.status == "unsupported"]
    if unsupported and len(unsupported) == len(built):
        blocking = sorted(set.intersection(*(set(c.unsupported) for c in unsupported)))
        blocking = blocking or sorted({n for c in unsupported for n in c.unsupported})
        details = [
            f"{name} ("
            + "; ".join(
                f"{c.name}: {c.unsupported[name]}" for c in unsupported if name in c.unsupported
            )
            + ")"
            for name in blocking[:5]
        ]
        return UnsupportedModelError(
            f"no available target can run {len(blocking)} node(s): {', '.join(details)}"
            + (" ..." if len(blocking) > 5 else "")
        )
    return CompileError(
        "no target produced a verified payload: "
        + "; ".join(f"{c.name}: {c.status} ({c.reason})" for c in built if c.status != "not built")
        + (
            " (use --no-verify to accept unverified outputs)"
            if any(c.status == "mismatch" for c in built)
            else ""
        )
    )

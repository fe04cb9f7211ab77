"""The one compile pipeline, after the model is loaded (``ai_vmm.driver`` calls ``run``):

    canonicalize -> representative inputs (the user's samples, the calibration data's, or
    synthetic shapes the reference runs at) -> reference outputs -> analyse once, at those
    shapes -> candidates: one-partition plans per device, a partitioned plan when asked for or
    when no device runs every node -> verify each against the reference -> precision /
    quantization gates per partition -> time at every shape bucket and choose (or the static
    rule) -> assemble the manifest (a plan per shape bucket where winners differ) -> write the
    artifact, load it through the runtime, check it, put it in place

Every decision lands in ``report.json``; the manifest holds only what the runtime needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm import choice, gates, hardware
from ai_vmm.building import Machine, build_candidates, no_candidate_error
from ai_vmm.candidates import Candidate
from ai_vmm.frontends import LoadedModel
from ai_vmm.inputs import Tolerance, compare
from ai_vmm.options import CompileOptions
from ai_vmm.partition import sample_dims, sample_sizes
from ai_vmm.passes.analyze import analyze
from ai_vmm.passes.canonicalize import canonicalize
from ai_vmm.passes.concrete_shapes import dims_from_shapes
from ai_vmm.passes.recipes import choose_recipe
from ai_vmm.reference import Reference
from ai_vmm.representative import Inputs, reference_outputs, representative_inputs
from ai_vmm.runtime.artifact import Manifest, PartitionSpec, PlanSpec, copy_artifact
from ai_vmm.runtime.artifact import write_artifact as write_artifact_files
from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.errors import CompileError, VmmError
from ai_vmm.shapes import Bucket
from ai_vmm.signature import bounded_signature, model_signature
from ai_vmm.special_values import summary_line
from ai_vmm.targets.base import TargetOptions

Progress = Callable[[str], None]
Sample = dict[str, np.ndarray]


@dataclass
class Result:
    """What the driver writes: the manifest, the report, and the payload directories."""

    manifest: Manifest
    report: dict[str, Any]
    payloads: dict[str, Path]
    decision: choice.Decision
    inputs: Inputs


def run(
    loaded: LoadedModel,
    reference_path: Path,
    bounds: dict[str, list[Any]],
    work: Path,
    options: CompileOptions,
    machine: Machine,
    devices: list[Device],
    say: Progress,
    timings: dict[str, float],
) -> Result:
    """Every stage after loading; see the module docstring."""
    model = loaded.model
    reference = Reference(model, reference_path)
    clock = time.perf_counter()
    say("canonicalizing")
    canon = canonicalize(model, frozenset(options.disabled_passes))
    timings["canonicalize"] = time.perf_counter() - clock
    signature_in, signature_out = model_signature(model)
    signature_in = bounded_signature(signature_in, bounds)

    tolerance, widened = verification_tolerance(model, options.tolerance)
    if widened:
        say(f"note: {widened}")
        options = replace(options, tolerance=tolerance)
    clock = time.perf_counter()
    inputs = representative_inputs(model, signature_in, reference, options, say)
    expected, verify_note = reference_outputs(inputs, reference, options, say)
    timings["inputs"] = time.perf_counter() - clock

    say("analysing the architecture")
    clock = time.perf_counter()
    dims = sample_dims(model, inputs.primary)
    profile = analyze_or_none(model, inputs.primary)
    recipe = options.recipe or (choose_recipe(profile) if profile is not None else "default")
    timings["analyze"] = time.perf_counter() - clock
    label = profile.primary_label if profile is not None else None
    say(f"architecture: {label or 'unclassified'}; recipe: {recipe}")

    extra: dict[str, Any] = {
        "input_bounds": bounds,
        "sample_dims": dims,
        "sample_sizes": sample_sizes(model, inputs.verify),
    }
    if loaded.torch_program is not None:
        # The cuda target compiles the frontend's own torch program when it gets the whole model.
        extra["torch_program"] = loaded.torch_program
        extra["torch_program_io"] = (
            [v.name for v in model.graph.inputs],
            [v.name for v in model.graph.outputs],
        )
    quantizing = options.quantization.active(options.precision)
    # Lower precision is the quantize stage's job, behind its gates: build float first.
    target_options = TargetOptions(
        precision="fp32" if quantizing else options.precision, extra=extra
    )
    clock = time.perf_counter()
    built = build_candidates(
        model,
        recipe,
        devices,
        target_options,
        options,
        machine,
        inputs,
        expected,
        reference,
        work,
        say,
    )
    timings["build"] = time.perf_counter() - clock
    ok = [c for c in built if c.status == "ok"]
    if not ok:
        raise no_candidate_error(built)
    if quantizing:
        clock = time.perf_counter()
        gates.quantize(
            model,
            [c for c in ok if not c.deferred],
            options.quantization,
            precision=options.precision,
            target_options=target_options,
            work=work,
            host_isa=hardware.detect_cpu().isa,
            measure_speed=options.tune,
            speed_budget_s=options.tune_budget_s,
            say=say,
        )
        timings["quantize"] = time.perf_counter() - clock
    clock = time.perf_counter()
    decision = decide(ok, inputs, options, say)
    timings["tune"] = time.perf_counter() - clock
    manifest_parts, plans, payloads = assemble(decision)
    if plans:
        rules = {c.bucket.name: c.rule for c in decision.choices}
        plan_report = [
            {"id": p.id, "reason": rules.get(p.id.split("-", 1)[1], ""), "when": p.when}
            for p in plans
        ]
    primary = decision.primary.candidate
    chosen_devices = sorted({f"{p.device.target}:{p.device.name}" for p in primary.partitions})
    report: dict[str, Any] = {
        "source": {"path": loaded.source, "sha256": loaded.sha256, "notes": loaded.notes},
        "stages": {"canonicalize": canon.to_json()},
        "profile": profile.to_json() if profile is not None else None,
        "architecture": label,
        "recipe": recipe,
        "inputs": inputs.report,
        "candidates": [c.to_json(clocks=options.tune) for c in built],
        "chosen": {
            "device": ",".join(chosen_devices),
            "rule": decision.primary.rule,
            "candidate": primary.name,
            "config": decision.primary.override,
        },
        "buckets": [c.to_json() for c in decision.choices],
        "tuning": decision.timing,
        "verification": primary.verification
        or {"status": "skipped", "reason": verify_note or inputs.failure or "not verified"},
    }
    if plans:
        report["plans"] = plan_report
    if primary.quantization:
        report["quantization"] = primary.quantization
    special = (primary.verification or {}).get("special_values")
    if special is None and isinstance(primary.verification, dict):
        special = (primary.verification.get("float_payload") or {}).get("special_values")
    if special is not None:
        report["special_values"] = special
        if special.get("status") == "differs":
            say(f"note: NaN/inf behaviour differs from the reference: {summary_line(special)}")
    if primary.plan is not None:
        report["plan"] = primary.plan
    if inputs.failure:
        report["unverified"] = inputs.failure
    if widened:
        report["tolerance_note"] = widened
    manifest = Manifest(
        inputs=signature_in,
        outputs=signature_out,
        partitions=tuple(manifest_parts),
        compile_options=options.to_json(),
        toolchain={},
        source={
            "format": "onnx",
            "sha256": loaded.sha256,
            "opset": model.opset_imports.get("", 0),
        },
        plans=tuple(plans),
    )
    return Result(manifest, report, payloads, decision, inputs)


def analyze_or_none(model: ir.Model, sample: Sample | None) -> Any:
    """The architecture profile at the representative shapes, or ``None`` on an odd graph."""
    try:
        dims = None
        if sample:
            shapes = {name: np.shape(array) for name, array in sample.items()}
            dims = dims_from_shapes(list(model.graph.inputs), shapes)
        return analyze(model, dims)
    except Exception:  # analysis informs the compile; it must never be why one fails
        return None


def decide(
    ok: list[Candidate], inputs: Inputs, options: CompileOptions, say: Progress
) -> choice.Decision:
    """Measure and choose, or take the static rule when nothing can be timed."""
    timeable = [c for c in ok if not c.deferred]
    if options.tune and inputs.buckets and timeable and len(ok) == len(timeable):
        decision = choice.choose(
            timeable, inputs.buckets, inputs.variables, options.tune_budget_s, say
        )
        say(f"chose {decision.primary.candidate.name} ({decision.primary.rule})")
        for extra in decision.choices[:-1]:
            say(f"at {extra.bucket.name}: {extra.candidate.name} ({extra.rule})")
        return decision
    if not options.tune:
        why = "first in the static priority order (--no-tune)"
    elif not inputs.buckets:
        why = "first in the static priority order (no input the reference runs on to time)"
    else:
        why = "first in the static priority order (devices not present: nothing to time)"
    first, rule = choice.static_choice(ok, why)
    bucket = inputs.buckets[0] if inputs.buckets else Bucket("primary", {}, {})
    return choice.Decision([choice.BucketChoice(bucket, first, {}, rule, False)], {})


QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLinear",
    }
)
QUANTIZED_TOLERANCE = Tolerance(rtol=1e-2, atol=1e-2)


def verification_tolerance(model: ir.Model, given: Tolerance) -> tuple[Tolerance, str]:
    """The tolerance to verify with, and why it was widened (``""`` when not).

    A model that is already quantized (QDQ or integer ops) rounds at every integer op, and
    backends fuse those ops differently (ONNX Runtime's own optimized payload differs from its
    unoptimized reference by a quantization step: 3e-3 on a sigmoid output of a real QDQ
    Whisper encoder). A float tolerance would fail every candidate; the default widens to
    ``QUANTIZED_TOLERANCE`` (a tolerance the user set is kept).
    """
    ops = {n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)} & QUANTIZED_OPS
    if not ops or given != Tolerance():
        return given, ""
    return QUANTIZED_TOLERANCE, (
        f"the model is quantized ({', '.join(sorted(ops))}): verified with rtol "
        f"{QUANTIZED_TOLERANCE.rtol}, atol {QUANTIZED_TOLERANCE.atol} (backends round integer "
        "ops differently; --rtol/--atol override)"
    )


def assemble(
    decision: choice.Decision,
) -> tuple[list[PartitionSpec], list[PlanSpec], dict[str, Path]]:
    """Manifest partitions (the primary plan's are ``p0``, ``p1``...), plans, payload dirs."""
    ordered = [decision.primary, *decision.choices[:-1]]
    specs: list[PartitionSpec] = []
    payloads: dict[str, Path] = {}
    plan_ids: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}
    plans: list[PlanSpec] = []
    for number, item in enumerate(ordered):
        key = (item.candidate.name, repr(sorted(item.override.items())))
        if key not in plan_ids:
            prefix = "" if number == 0 else f"b{number}"
            ids: list[str] = []
            for part in item.candidate.partitions:
                part_id = f"{prefix}{part.id}"
                config = {**part.config, **item.override}
                specs.append(part.spec(part_id, part_id, config))
                assert part.work_dir is not None
                payloads[part_id] = part.work_dir
                ids.append(part_id)
            plan_ids[key] = (f"plan{len(plan_ids)}", tuple(ids))
        plan_id, plan_parts = plan_ids[key]
        plans.append(PlanSpec(f"{plan_id}-{item.bucket.name}", plan_parts, item.when))
    if len(plan_ids) == 1:
        return specs, [], payloads
    # Dispatch order: the extra buckets first, the primary plan (empty ``when``) last.
    return specs, [*plans[1:], replace(plans[0], when={})], payloads


def write_checked(
    result: Result, out_path: Path, work: Path, options: CompileOptions, say: Progress
) -> None:
    """Write the artifact in ``work``, load it through the runtime and check that each bucket's
    sample gives what the candidate chosen for that bucket gave; then put it at ``out_path``."""
    decision, inputs = result.decision, result.inputs
    check = work / "artifact.vmm"
    write_artifact_files(check, result.manifest, result.report, result.payloads)
    if any(c.candidate.deferred for c in decision.choices) or not inputs.buckets:
        say(f"writing {out_path}")
        copy_artifact(check, out_path)
        return
    from ai_vmm.runtime import load

    say("checking the written artifact through the runtime")
    loaded = load(check)
    try:
        for item in decision.choices:
            if not item.bucket.sample:
                continue
            executors = {}
            if item.override:
                executors = choice.contender_executors(item.candidate, item.override)
            wanted = item.candidate.run(item.bucket.sample, executors)
            try:
                got = loaded.run(item.bucket.sample)
            except VmmError as exc:
                raise CompileError(
                    f"the written artifact does not run at {item.bucket.name} ({exc}); "
                    "this is a bug in ai-vmm: please report it with the model"
                ) from exc
            for spec in result.manifest.outputs:
                if spec.kind != "tensor" or not isinstance(got.get(spec.name), np.ndarray):
                    continue
                check_result = compare(got[spec.name], wanted[spec.name], options.tolerance)
                if not check_result["passed"]:
                    raise CompileError(
                        f"the written artifact differs from the chosen candidate at "
                        f"{item.bucket.name} on {spec.name}: this is a bug in ai-vmm"
                    )
    finally:
        close = getattr(loaded, "close", None)
        if close is not None:
            close()
    say(f"writing {out_path}")
    copy_artifact(check, out_path)


__all__ = ["Machine", "Result", "run", "write_checked"]

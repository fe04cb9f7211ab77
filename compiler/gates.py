"""The gates every candidate passes, whatever its shape (one partition or several).

    verify:   the candidate's partitions in order, on every verification sample, against the
              reference outputs (elementwise tolerance, ``ai_vmm.inputs.compare``)
    quantize: per partition, the quantize stage (``ai_vmm.quantize``: the target's quantizer,
              an accuracy gate on held-out samples against that partition in float, a speed
              gate); then, for a split candidate, the whole chain against the float chain on
              held-out model inputs with the same limits (errors of several partitions add up).
              A partition the gates refuse stays float; a chain over the limit goes back to
              float entirely.

A partition of a split candidate is calibrated on what really reaches it: the user's calibration
samples run through the float partitions before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm.accuracy import AccuracyGate
from ai_vmm.calibration import CalibrationData, split_samples
from ai_vmm.candidates import BuiltPartition, Candidate
from ai_vmm.inputs import Tolerance, compare
from ai_vmm.quantize import QuantizationOptions, quantize_candidates
from ai_vmm.runtime.errors import VmmError
from ai_vmm.runtime.executors import Executor
from ai_vmm.signature import model_signature
from ai_vmm.targets.base import TargetOptions

Progress = Callable[[str], None]
Sample = dict[str, np.ndarray]


def verify(
    candidate: Candidate,
    samples: Sequence[Sample],
    expected: Sequence[dict[str, Any]],
    tolerance: Tolerance,
    description: str,
) -> dict[str, Any]:
    """Compare the candidate with the reference on every sample; the worst case per output."""
    results: dict[str, dict[str, Any]] = {}
    for index, (sample, reference) in enumerate(zip(samples, expected, strict=True)):
        try:
            got = candidate.run(sample)
        except VmmError as exc:
            return {
                "passed": False,
                "inputs": description,
                "outputs": {"*": {"passed": False, "reason": f"sample {index}: {exc}"}},
            }
        for name, ref in reference.items():
            if name not in got:
                result: dict[str, Any] = {"passed": False, "reason": "output missing"}
            elif isinstance(ref, list | dict) or ref is None:
                result = {"passed": True, "note": "non-tensor output not compared"}
            else:
                result = compare(got[name], ref, tolerance)
            results[name] = _worse(results.get(name), result, index)
    return {
        "passed": all(r["passed"] for r in results.values()),
        "tolerance": tolerance.to_json(),
        "inputs": description,
        "samples": len(samples),
        "outputs": results,
    }


def _worse(old: dict[str, Any] | None, new: dict[str, Any], index: int) -> dict[str, Any]:
    """Keep the worse of two comparisons of one output (a failure, or the larger error)."""
    new = {**new, "sample": index} if not new.get("passed", True) else new
    if old is None:
        return new
    if old["passed"] != new["passed"]:
        return old if not old["passed"] else new
    if new.get("max_abs_error", 0.0) > old.get("max_abs_error", 0.0):
        merged = {**new}
        if "cosine" in old and "cosine" in new:
            merged["cosine"] = min(old["cosine"], new["cosine"])
        return merged
    if "cosine" in old and "cosine" in new:
        return {**old, "cosine": min(old["cosine"], new["cosine"])}
    return old


def mismatch_reason(verification: dict[str, Any]) -> str:
    return "outputs differ from the reference: " + ", ".join(
        f"{name} max abs error {r.get('max_abs_error', r.get('reason', '?'))}"
        for name, r in verification["outputs"].items()
        if not r["passed"]
    )


@dataclass
class _Float:
    """A partition's float payload, to go back to when the chain gate refuses."""

    work_dir: Path | None
    entry: str
    files: tuple[str, ...]
    config: dict[str, Any]
    executor: Executor | None
    verification: dict[str, Any] | None


def quantize(
    model: ir.Model,
    candidates: list[Candidate],
    options: QuantizationOptions,
    *,
    precision: str,
    target_options: TargetOptions,
    work: Path,
    host_isa: tuple[str, ...],
    measure_speed: bool,
    speed_budget_s: float,
    say: Progress,
) -> None:
    """The quantize stage for every candidate that verified in float (see the module doc)."""

    def stage(part_model: ir.Model, part: BuiltPartition, opts: QuantizationOptions) -> None:
        quantize_candidates(
            part_model,
            [part],
            opts,
            precision=precision,
            target_options=target_options,
            work=work,
            host_isa=host_isa,
            measure_speed=measure_speed,
            speed_budget_s=speed_budget_s,
            say=say,
        )

    for index, candidate in enumerate(candidates):
        if not candidate.partitioned:
            part = candidate.partitions[0]
            stage(part.model, part, options)
            candidate.quantization = part.quantization
            if part.quantization and part.quantization.get("decision") == "quantized":
                candidate.verification = part.verification
            continue
        _quantize_split(model, candidate, options, work / f"split{index}-q", stage, say)


Stage = Callable[[ir.Model, BuiltPartition, QuantizationOptions], None]


def _quantize_split(
    model: ir.Model,
    candidate: Candidate,
    options: QuantizationOptions,
    work: Path,
    stage: Stage,
    say: Progress,
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    floats = {p.id: _snapshot(p) for p in candidate.partitions}
    inputs, _ = model_signature(model)
    data = options.calibration
    whole = split_samples(
        data or CalibrationData("random", "synthetic inputs"),
        inputs,
        options.calib_samples if data is not None else 0,
        model,
    )
    samples = [*whole.calibration, *whole.held_out]
    # What reaches each partition, computed through the float partitions before it.
    flows = [candidate.run(sample) for sample in samples] if data is not None else []
    reports: dict[str, Any] = {}
    for part in candidate.partitions:
        part_options = options
        if data is not None:
            records = tuple({n: flow[n] for n in part.inputs} for flow in flows)
            part_options = replace(
                options,
                calibration=CalibrationData(
                    "iterable",
                    f"{data.description}, through the partitions before {part.id}",
                    records,
                    False,
                    data.sha256,
                ),
                calib_samples=len(records),
            )
        say(f"[{part.id} {part.device.key}] quantize stage")
        stage(part.model, part, part_options)
        reports[part.id] = part.quantization
    decided = [pid for pid, r in reports.items() if r and r.get("decision") == "quantized"]
    summary: dict[str, Any] = {"partitions": reports}
    if not decided:
        summary.update(decision="float", reason="no partition kept a low-precision payload")
        candidate.quantization = summary
        return
    # The chain gate: the whole quantized chain against the whole float chain.
    held = list(whole.held_out)
    float_outputs = [_run_with(candidate, floats, sample) for sample in held]
    names = tuple(v.name or "" for v in model.graph.outputs)
    gate = AccuracyGate(float_outputs, names, options.limits)
    accuracy = gate.evaluate([candidate.run(sample) for sample in held])
    accuracy["enforced"] = not whole.random
    summary["accuracy"] = accuracy
    if accuracy["enforced"] and not accuracy["passed"]:
        for part in candidate.partitions:
            _restore(part, floats[part.id])
        summary.update(
            decision="float",
            reason="the partitions passed their own gates but the whole chain is over the "
            "accuracy limit: the artifact keeps float",
            accuracy_limit_exceeded=True,
        )
    else:
        summary.update(
            decision="quantized",
            reason=f"low precision in partition(s) {', '.join(decided)}",
        )
        candidate.verification = {
            "passed": True,
            "float_payload": candidate.verification,
            "accuracy_gate": {k: accuracy[k] for k in ("metrics", "limits", "score", "passed")},
            "note": "the float chain matched the reference; the quantized chain passed the gate",
        }
    candidate.quantization = summary


def _snapshot(part: BuiltPartition) -> _Float:
    return _Float(
        part.work_dir, part.entry, part.files, dict(part.config), part.executor, part.verification
    )


def _restore(part: BuiltPartition, saved: _Float) -> None:
    part.work_dir, part.entry, part.files = saved.work_dir, saved.entry, saved.files
    part.config, part.executor, part.verification = saved.config, saved.executor, saved.verification
    if part.quantization is not None:
        part.quantization = {**part.quantization, "decision": "float"}


def _run_with(candidate: Candidate, floats: dict[str, _Float], sample: Sample) -> dict[str, Any]:
    executors = {pid: f.executor for pid, f in floats.items() if f.executor is not None}
    return candidate.run(sample, executors)

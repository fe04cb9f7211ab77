"""The quantize stage: low-precision payloads behind an accuracy gate and a speed gate.

For every candidate that built and verified in float:

    samples (calibration / held-out, checked against the signature)
      -> the target's ``quantize`` (NNCF for openvino, onnxruntime.quantization for onnxruntime)
      -> accuracy gate on held-out samples against the float payload on the same device
         -> over the limit (static INT8): keep the most sensitive layers in float (NNCF
            accuracy control / a sensitivity search) and gate again
         -> still over: keep float, say so
      -> speed gate: the quantized payload must be measurably faster than float on the device,
         unless ``force``
      -> the candidate carries the kept payload and a ``quantization`` report section

The preset comes from the architecture profile (``ai_vmm.passes.analyze`` when it exists; else
a graph check here: a Softmax between two MatMuls is attention), never from the user.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import onnx_ir as ir

from ai_vmm import registry
from ai_vmm.accuracy import DEFAULT_LIMITS, AccuracyGate, Outputs, looks_like_class_scores
from ai_vmm.calibration import CalibrationData, CalibrationSplit, split_samples
from ai_vmm.runtime.devices import Device
from ai_vmm.runtime.errors import CompileError, VmmError
from ai_vmm.runtime.executors import Executor, create_executor
from ai_vmm.signature import bounded_signature, model_signature
from ai_vmm.targets.base import AccuracyCheck, QuantizationRequest, QuantizedPayload, TargetOptions
from ai_vmm.tuning import measure

Progress = Callable[[str], None]

ACTIVATION_MODES = ("int8", "int8-dynamic")
WEIGHT_MODES = ("int8", "int4")
DEFAULT_CALIB_SAMPLES = 300
SPEED_THRESHOLD = 1.05
"""The quantized payload must be at least this much faster (float ms / quantized ms)."""
SPEED_ROUNDS = 5
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
_CLASSIFIER_PATH = frozenset(
    {"Reshape", "Flatten", "Identity", "Softmax", "LogSoftmax", "Add", "Squeeze", "Cast"}
)
_SCORE_PATH = frozenset({"Div", "Mul", "Add", "Where", "Cast", "Sub"})
_PROB_PATH = frozenset({"Dropout", "Cast", "Identity"})
_TRANSFORMER_LABELS = ("transformer", "decoder", "attention")


@dataclass(frozen=True)
class QuantizationOptions:
    """What the user asked for: modes, calibration, limits (see docs/quantization.md)."""

    quantize: str | None = None
    """``int8`` (static, needs calibration data) or ``int8-dynamic`` (onnxruntime)."""
    weights: str | None = None
    """Weight-only compression: ``int8`` or ``int4``."""
    group_size: int | None = None
    ratio: float | None = None
    calibration: CalibrationData | None = None
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    max_drop: tuple[tuple[str, float], ...] = ()
    force: bool = False
    """Keep the quantized payload even when it is not faster (the accuracy gate still holds)."""

    @property
    def limits(self) -> dict[str, float]:
        return dict(self.max_drop) or dict(DEFAULT_LIMITS)

    def active(self, precision: str) -> bool:
        """Whether the stage has anything to do (a mode, or a precision below fp32)."""
        return bool(self.quantize or self.weights or precision != "fp32")

    def to_json(self) -> dict[str, Any]:
        """For the manifest and the cache key: the calibration data by digest, not by path."""
        return {
            "quantize": self.quantize,
            "weights": self.weights,
            "group_size": self.group_size,
            "ratio": self.ratio,
            "calibration": self.calibration.to_json() if self.calibration else None,
            "calib_samples": self.calib_samples,
            "max_accuracy_drop": dict(sorted(self.max_drop)),
            "force": self.force,
        }


def validate_quantization(options: QuantizationOptions) -> None:
    """Refuse contradictory or incomplete requests before any work is done.

    Raises:
        CompileError: an unknown mode, static INT8 without calibration data, bad numbers.
    """
    if options.quantize is not None and options.quantize not in ACTIVATION_MODES:
        raise CompileError(
            f"unknown --quantize '{options.quantize}' (choose from {', '.join(ACTIVATION_MODES)})"
        )
    if options.weights is not None and options.weights not in WEIGHT_MODES:
        raise CompileError(
            f"unknown --weights '{options.weights}' (choose from {', '.join(WEIGHT_MODES)})"
        )
    if options.quantize and options.weights:
        raise CompileError("--quantize and --weights are alternatives: give one of them")
    if options.quantize == "int8" and options.calibration is None:
        raise CompileError(
            "--quantize int8 needs calibration data: give --calib FILE.npz or DIR "
            "(calibration= in the API) with real inputs, or --calib random to accept that "
            "accuracy will be unknown"
        )
    if options.calib_samples < 1:
        raise CompileError("--calib-samples must be at least 1")
    if options.group_size is not None and options.group_size < 1:
        raise CompileError("--group-size must be positive")
    if options.ratio is not None and not 0.0 < options.ratio <= 1.0:
        raise CompileError("--ratio must be in (0, 1]")
    if (options.group_size or options.ratio is not None) and options.weights != "int4":
        raise CompileError("--group-size and --ratio apply to --weights int4")


class BuiltCandidate(Protocol):
    """The driver's view of a candidate that built and verified in float."""

    device: Device
    work_dir: Path | None
    entry: str
    files: tuple[str, ...]
    config: dict[str, Any]
    executor: Executor | None
    output_names: tuple[str, ...]
    verification: dict[str, Any] | None
    quantization: dict[str, Any] | None


@dataclass
class _Stage:
    model: ir.Model
    options: QuantizationOptions
    precision: str
    target_options: TargetOptions
    host_isa: tuple[str, ...]
    measure_speed: bool
    speed_budget_s: float
    say: Progress
    split: CalibrationSplit | None = None
    profile: dict[str, Any] = field(default_factory=dict)
    ignored: tuple[tuple[str, str], ...] = ()


def quantize_candidates(
    model: ir.Model,
    candidates: list[Any],
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
    """Run the stage on each candidate; each gets a ``quantization`` section (and maybe a new
    payload: ``work_dir``, ``entry``, ``files``, ``config``, ``executor``).

    Raises:
        InputError: calibration samples that do not fit the model's inputs.
    """
    stage = _Stage(
        model,
        options,
        precision,
        target_options,
        host_isa,
        measure_speed,
        speed_budget_s,
        say,
    )
    inputs, _ = model_signature(model)
    inputs = bounded_signature(inputs, target_options.extra.get("input_bounds") or {})
    data = options.calibration
    if data is not None:
        stage.split = split_samples(data, inputs, options.calib_samples, model)
        if stage.split.random:
            say(
                "WARNING: calibrating on random inputs (--calib random): the accuracy of the "
                "quantized model is UNKNOWN; give real samples with --calib"
            )
    else:
        stage.split = split_samples(CalibrationData("random", "synthetic inputs"), inputs, 0, model)
    transformer, evidence, source = architecture(model)
    stage.profile = {"transformer": transformer, "evidence": evidence, "source": source}
    ignored = sensitive_nodes(model, transformer)
    # Their output tensor names too: a backend may name an op after the tensor it produces.
    by_name = {node.name: node for node in model.graph if node.name}
    aliases = [
        (value.name, why)
        for name, why in ignored
        for value in by_name[name].outputs
        if value.name and value.name != name
    ]
    stage.ignored = tuple(ignored) + tuple(aliases)
    weighted = count_weighted(model)
    for candidate in candidates:
        candidate.quantization = _quantize_one(stage, candidate, weighted, work)


def _quantize_one(
    stage: _Stage, candidate: BuiltCandidate, weighted: int, work: Path
) -> dict[str, Any]:
    options, split = stage.options, stage.split
    assert split is not None and candidate.work_dir is not None and candidate.executor is not None
    key = candidate.device.key
    report: dict[str, Any] = {
        "requested": {
            "quantize": options.quantize,
            "weights": options.weights,
            "precision": stage.precision,
        },
        "profile": stage.profile,
        "data": split.to_json(),
        "notes": [],
    }
    if (options.quantize or options.weights) and weighted == 0:
        stage.say(f"[{key}] nothing to quantize: the artifact stays float")
        return _float(
            report,
            "nothing to quantize: the model has no convolution, matmul or gemm with constant "
            "weights",
        )
    target = registry.get_target(candidate.device.target)
    if not target.can_quantize:
        return _float(report, f"target {candidate.device.target} does not offer quantization")
    held = split.held_out
    stage.say(f"[{key}] float outputs on {len(held)} held-out samples")
    reference = [candidate.executor.run(sample) for sample in held]
    names = candidate.output_names
    gate = AccuracyGate(reference, names, stage.options.limits)
    enforced = not split.random
    request = QuantizationRequest(
        activations=options.quantize,
        weights=options.weights,
        precision=stage.precision,
        group_size=options.group_size,
        ratio=options.ratio,
        transformer=bool(stage.profile["transformer"]),
        ignored_nodes=stage.ignored,
        calibration=split.calibration if options.calibration is not None else (),
        host_isa=stage.host_isa,
    )
    built = _build(stage, target, candidate, request, work / f"{candidate.work_dir.name}-q")
    if isinstance(built, str):
        return _float(report, built)
    payload, executor, quantized_dir = built
    accuracy = gate.evaluate([executor.run(sample) for sample in held])
    accuracy["enforced"] = enforced
    if not enforced:
        accuracy["note"] = (
            "measured on random inputs: accuracy on real data is unknown"
            if options.calibration is not None
            else "measured on synthetic inputs (no calibration data given): indicative only"
        )
    report["accuracy"] = accuracy
    report["size"] = _sizes(candidate.work_dir, candidate.files, quantized_dir, payload)
    _describe(report, payload)
    if enforced and not accuracy["passed"] and options.quantize == "int8":
        stage.say(
            f"[{key}] accuracy over the limit (score {accuracy['score']}): keeping the most "
            "sensitive layers in float"
        )
        check = AccuracyCheck(held, gate.score, names)
        restore_request = replace(request, accuracy=check)
        restored = _build(
            stage, target, candidate, restore_request, work / f"{candidate.work_dir.name}-qa"
        )
        if isinstance(restored, str):
            report["accuracy_restoration"] = {"status": "failed", "reason": restored}
        else:
            payload, executor, quantized_dir = restored
            accuracy = gate.evaluate([executor.run(sample) for sample in held])
            accuracy["enforced"] = True
            report["accuracy_restoration"] = {"status": "done", "first_attempt": report["accuracy"]}
            report["accuracy"] = accuracy
            report["size"] = _sizes(candidate.work_dir, candidate.files, quantized_dir, payload)
            _describe(report, payload)
    if enforced and not accuracy["passed"]:
        report["accuracy_limit_exceeded"] = True
        return _float(
            report,
            f"accuracy drop over the limit ({_drops_text(accuracy)}): the artifact keeps float",
        )
    if (options.quantize or options.weights) and not report["quantized_layers"]["count"]:
        return _float(report, "no layer stayed quantized within the accuracy limit")
    if stage.measure_speed:
        speed = _speed_gate(candidate.executor, executor, held[0], stage.speed_budget_s)
        report["speed"] = speed
        stage.say(
            f"[{key}] float {speed['float_ms']} ms, quantized {speed['quantized_ms']} ms "
            f"({speed['ratio']}x)"
        )
        if not speed["passed"] and not options.force:
            return _float(
                report,
                f"not faster than float on {key} (measured {speed['ratio']}x, needs "
                f">= {SPEED_THRESHOLD}x): the artifact keeps float (--force-quantize keeps it)",
            )
        if not speed["passed"]:
            report["notes"].append("kept although not faster: --force-quantize")
    else:
        report["speed"] = {"status": "skipped", "reason": "--no-tune: nothing is timed"}
    report["decision"] = "quantized"
    candidate.work_dir = quantized_dir
    candidate.entry = payload.payload.entry
    candidate.files = payload.payload.files
    candidate.config = payload.payload.config
    candidate.executor = executor
    candidate.verification = {
        "passed": bool(accuracy["passed"]) or not enforced,
        "float_payload": candidate.verification,
        "accuracy_gate": {k: accuracy[k] for k in ("metrics", "limits", "score", "passed")},
        "note": "the float payload matched the reference; the quantized one passed the gate",
    }
    return report


def _build(
    stage: _Stage, target: Any, candidate: BuiltCandidate, request: QuantizationRequest, out: Path
) -> tuple[QuantizedPayload, Executor, Path] | str:
    """The target's quantized payload, loaded; or why there is none."""
    key = candidate.device.key
    stage.say(f"[{key}] quantizing ({_mode_text(request)})")
    out.mkdir(parents=True, exist_ok=True)
    try:
        payload: QuantizedPayload = target.quantize(
            stage.model, candidate.device, stage.target_options, request, out
        )
        executor = create_executor(
            candidate.device.target,
            out / payload.payload.entry,
            candidate.device.name,
            payload.payload.config,
            candidate.output_names,
        )
    except VmmError as exc:
        return f"quantization failed on {key}: {exc}"
    except Exception as exc:  # a library's own exception: one line, keep float
        text = " ".join(str(exc).split())[:300]
        return f"quantization failed on {key}: {type(exc).__name__}: {text}"
    return payload, executor, out


def _describe(report: dict[str, Any], payload: QuantizedPayload) -> None:
    report["method"] = payload.method
    report["quantized_layers"] = {"count": len(payload.quantized), "names": payload.quantized[:200]}
    report["float_layers"] = dict(sorted(payload.kept_float.items()))
    report["notes"] = sorted(set(report["notes"]) | set(payload.notes))


def _sizes(
    float_dir: Path, float_files: tuple[str, ...], quant_dir: Path, payload: QuantizedPayload
) -> dict[str, Any]:
    before = sum((float_dir / name).stat().st_size for name in float_files)
    after = sum((quant_dir / name).stat().st_size for name in payload.payload.files)
    return {
        "float_bytes": before,
        "quantized_bytes": after,
        "ratio": round(after / before, 4) if before else None,
    }


def _float(report: dict[str, Any], reason: str) -> dict[str, Any]:
    report["decision"] = "float"
    report["reason"] = reason
    return report


def _speed_gate(
    float_executor: Executor, quant_executor: Executor, sample: Outputs, budget_s: float
) -> dict[str, Any]:
    """Float and quantized payload timed in interleaved rounds; ratio of the round medians."""
    per_round = max(budget_s / SPEED_ROUNDS, 0.05)
    float_ms: list[float] = []
    quant_ms: list[float] = []
    for _ in range(SPEED_ROUNDS):
        float_ms.append(measure(lambda: float_executor.run(sample), budget_s=per_round).median_ms)
        quant_ms.append(measure(lambda: quant_executor.run(sample), budget_s=per_round).median_ms)
    f, q = statistics.median(float_ms), statistics.median(quant_ms)
    ratio = f / q if q > 0 else 0.0
    return {
        "float_ms": round(f, 4),
        "quantized_ms": round(q, 4),
        "ratio": round(ratio, 3),
        "threshold": SPEED_THRESHOLD,
        "rounds": SPEED_ROUNDS,
        "passed": ratio >= SPEED_THRESHOLD,
    }


def _drops_text(accuracy: dict[str, Any]) -> str:
    return ", ".join(
        f"{metric} {accuracy['drops'].get(metric, '?')} > {limit}"
        for metric, limit in accuracy["limits"].items()
        if metric in accuracy["drops"] and accuracy["drops"][metric] > limit
    )


def _mode_text(request: QuantizationRequest) -> str:
    parts = []
    if request.activations:
        parts.append(f"activations {request.activations}")
    if request.weights:
        parts.append(f"weights {request.weights}")
    if request.precision != "fp32":
        parts.append(f"precision {request.precision}")
    if request.accuracy is not None:
        parts.append("accuracy control")
    return ", ".join(parts)


def count_weighted(model: ir.Model) -> int:
    """Convolutions, matmuls and gemms with a constant second operand: what INT8 changes."""
    return sum(1 for node in model.graph if _weight_of(node) is not None)


def _weight_of(node: ir.Node) -> ir.Value | None:
    if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
        return None
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    weight = node.inputs[1]
    return weight if weight.const_value is not None or weight.is_initializer() else None


def architecture(model: ir.Model) -> tuple[bool, str, str]:
    """(is a transformer, evidence, where the verdict came from)."""
    fallback = ""
    analyze: Callable[[ir.Model], Any] | None
    try:
        from ai_vmm.passes.analyze import analyze
    except ImportError:  # the architecture profile is younger than this stage
        analyze = None
    if analyze is not None:
        try:
            profile = analyze(model)
            labels = [str(getattr(label, "label", label)).lower() for label in profile.labels]
        except Exception as exc:  # a profile we cannot read: fall back to the graph check
            fallback = f" (analyze failed: {type(exc).__name__})"
        else:
            hit = [label for label in labels if any(t in label for t in _TRANSFORMER_LABELS)]
            return bool(hit), f"labels {labels}", "ai_vmm.passes.analyze"
    blocks = attention_blocks(model)
    fused = sorted(
        {n.op_type for n in model.graph if n.op_type in ("Attention", "MultiHeadAttention")}
    )
    if fused:
        return True, f"fused {', '.join(fused)} ops", "graph check in ai_vmm.quantize" + fallback
    evidence = f"{len(blocks)} Softmax between two MatMuls (attention)"
    return bool(blocks), evidence, "graph check in ai_vmm.quantize" + fallback


def attention_blocks(model: ir.Model) -> list[tuple[ir.Node, ir.Node]]:
    """(scores MatMul, Softmax) pairs where the Softmax's output also feeds a MatMul."""
    found = []
    for node in model.graph:
        if node.op_type != "Softmax" or node.inputs[0] is None:
            continue
        scores = _upstream(node.inputs[0], _SCORE_PATH, "MatMul")
        if scores is None:
            continue
        if _feeds(node.outputs[0], "MatMul", _PROB_PATH):
            found.append((scores, node))
    return found


def sensitive_nodes(model: ir.Model, transformer: bool) -> tuple[tuple[str, str], ...]:
    """Known-sensitive layers kept float: the final classifier, and attention score matmuls."""
    ignored: dict[str, str] = {}
    for value in model.graph.outputs:
        shape = value.shape
        if shape is None or len(shape) != 2 or not isinstance(shape[1], int) or shape[1] < 2:
            continue
        if value.dtype is not None and value.dtype != ir.DataType.FLOAT:
            continue
        producer = value.producer()
        for _ in range(6):
            if producer is None:
                break
            if _weight_of(producer) is not None and producer.name:
                ignored[producer.name] = "final classifier (class scores): kept float"
                break
            if producer.op_type not in _CLASSIFIER_PATH:
                break
            source = next(
                (v for v in producer.inputs if v is not None and v.const_value is None), None
            )
            producer = source.producer() if source is not None else None
    if transformer:
        for scores, _ in attention_blocks(model):
            if scores.name:
                ignored.setdefault(scores.name, "softmax input (attention scores): kept float")
    return tuple(sorted(ignored.items()))


def _upstream(value: ir.Value, through: frozenset[str], wanted: str) -> ir.Node | None:
    producer = value.producer()
    for _ in range(6):
        if producer is None:
            return None
        if producer.op_type == wanted:
            return producer
        if producer.op_type not in through:
            return None
        source = next((v for v in producer.inputs if v is not None and v.producer()), None)
        producer = source.producer() if source is not None else None
    return None


def _feeds(value: ir.Value, wanted: str, through: frozenset[str], depth: int = 0) -> bool:
    for user, _ in value.uses():
        if user.op_type == wanted:
            return True
        if (
            user.op_type in through
            and depth < 4
            and _feeds(user.outputs[0], wanted, through, depth + 1)
        ):
            return True
    return False


__all__ = [
    "QuantizationOptions",
    "architecture",
    "looks_like_class_scores",
    "quantize_candidates",
    "validate_quantization",
]

"""The public Python API: ``ai_vmm.compile`` and ``ai_vmm.load``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ai_vmm.accuracy import parse_max_drop
from ai_vmm.calibration import CalibrationSource, load_calibration
from ai_vmm.driver import CompileResult, Progress, compile_model
from ai_vmm.inputs import Tolerance
from ai_vmm.options import CompileOptions
from ai_vmm.quantize import DEFAULT_CALIB_SAMPLES, QuantizationOptions
from ai_vmm.runtime.errors import CompileError
from ai_vmm.samples import SampleSource, load_samples


def compile(
    model: Any,
    target: str = "auto",
    output: str | Path | None = None,
    *,
    input_shapes: Sequence[str] = (),
    tune: bool = True,
    verify: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    precision: str = "fp32",
    disable_passes: Sequence[str] = (),
    tune_seconds: float = 1.0,
    hardware: str | Path | None = None,
    recipe: str | None = None,
    trace_rules: bool = False,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
    quantize: str | None = None,
    weights: str | None = None,
    group_size: int | None = None,
    ratio: float | None = None,
    calibration: CalibrationSource | None = None,
    calib_samples: int = DEFAULT_CALIB_SAMPLES,
    max_accuracy_drop: Sequence[str] | Mapping[str, float] = (),
    force_quantize: bool = False,
    force: bool = False,
    samples: SampleSource | None = None,
    objective: str = "latency",
    **frontend_options: Any,
) -> CompileResult:
    """Compile ``model`` into an artifact and return where it went and what was decided.

    Args:
        model: an ONNX file path or an ``onnx.ModelProto`` (other formats: see docs/frontends.md).
        target: ``auto`` (measure every available target here, keep the fastest), one device
            such as ``openvino:CPU`` or ``onnxruntime:CPU``, or a priority list of them.
        output: the artifact path (``NAME.vmm`` directory, or ``NAME.vmm.zip`` for one file);
            default ``<model stem>.vmm`` in the working directory.
        input_shapes: ovc-style ``NAME[SHAPE]`` specs, e.g. ``input_ids[1,?]`` or
            ``pixel_values[1,3,224,224]`` or ``input_ids[1,1..128]``.
        tune: choose among candidates by measurement; ``False`` uses the documented static rule
            and makes the whole artifact reproducible byte for byte.
        verify: compare every candidate with ONNX Runtime on the original model.
        rtol: relative tolerance of that comparison.
        atol: absolute tolerance of that comparison.
        precision: ``fp32`` (default), ``fp16`` or ``bf16`` inference precision.
        disable_passes: canonicalization steps to skip, by name.
        tune_seconds: timing budget per candidate when tuning.
        hardware: plan for the machine a hardware profile describes (a shipped name such as
            ``xeon-arc-npu``, or a JSON path) instead of this one; see docs/partitioning.md.
        recipe: a fusion recipe by name (default: chosen from the architecture profile).
        trace_rules: record fusion near misses (a pattern matched, its check declined, why).
        cache_dir: a compile cache directory (default: ``$AI_VMM_CACHE_DIR`` if set).
        progress: called with a short message as each stage starts.
        quantize: ``int8`` (static post-training quantization; needs ``calibration``) or
            ``int8-dynamic`` (onnxruntime). See docs/quantization.md.
        weights: weight-only compression, ``int8`` or ``int4``.
        group_size: INT4 group size.
        ratio: share of weight layers in INT4 (the rest INT8; openvino).
        calibration: an ``.npz`` path, a directory of ``.npz``/``.npy`` files, an iterable of
            input dicts, a callable returning one, or ``"random"`` (accuracy then unknown). The
            last quarter is held out for the accuracy gate. For a causal LM: text that
            calibrates INT4 weights (a string, a list of strings, a ``.txt`` or ``.jsonl``
            file); without it, standard-library docstrings (docs/generate.md).
        calib_samples: at most this many samples calibrate (default 300).
        max_accuracy_drop: limits such as ``["cosine=0.01", "top1=1"]`` or
            ``{"top1": 1.0}``; default ``cosine=0.01``.
        force_quantize: keep the quantized payload even when it is not faster than float.
        samples: real inputs, as users send them: a dict of arrays (one call), a list of such
            dicts, an ``.npz`` file (one call) or a directory of ``.npz`` files. Verification
            runs on them and candidates are timed at their shapes; without samples, the shapes
            come from the model and a ladder of common sizes (docs/targets.md).
        objective: what a partitioned plan minimizes: ``latency`` (default) or ``throughput``
            (requests pipelined through the partitions, ``ai_vmm.runtime.pipelined``).
        force: replace whatever is at ``output`` even when it is not an ai-vmm artifact (a
            file, or a directory of other files); without it such a path is refused.
        **frontend_options: what a frontend needs beyond the model (``example_inputs``,
            ``dynamic_shapes`` for torch; ``input_signature``, ``signature``, ``tag`` for
            TensorFlow; ``input_names``, ``output_names``, ``opset`` for both).

    Raises:
        ai_vmm.VmmError: a subclass whose one-line message says what was wrong.
    """
    from ai_vmm.frontends.causal_lm import is_causal_lm

    if is_causal_lm(model):  # .gguf, HF *ForCausalLM directory or model: docs/generate.md
        from ai_vmm.llm_compile import compile_lm_from_api

        return compile_lm_from_api(
            model, output, target=target, precision=precision, weights=weights,
            group_size=group_size, ratio=ratio, verify=verify, tune=tune, quantize=quantize,
            force_quantize=force_quantize, cache_dir=cache_dir, progress=progress, force=force,
            frontend_options=frontend_options, calibration=calibration,
        )  # fmt: skip
    check_keywords(model, frontend_options)
    options = CompileOptions(
        target=target,
        input_shapes=tuple(input_shapes),
        tune=tune,
        verify=verify,
        tolerance=Tolerance(rtol=rtol, atol=atol),
        precision=precision,
        disabled_passes=tuple(disable_passes),
        tune_budget_s=tune_seconds,
        hardware=str(hardware) if hardware is not None else None,
        recipe=recipe,
        trace_rules=trace_rules,
        quantization=QuantizationOptions(
            quantize=quantize,
            weights=weights,
            group_size=group_size,
            ratio=ratio,
            calibration=None if calibration is None else load_calibration(calibration),
            calib_samples=calib_samples,
            max_drop=tuple(sorted(parse_max_drop(_drop_specs(max_accuracy_drop)).items())),
            force=force_quantize,
        ),
        samples=None if samples is None else load_samples(samples),
        objective=objective,
    )
    return compile_model(
        model,
        output,
        options,
        cache_dir=cache_dir,
        progress=progress,
        frontend_options=frontend_options,
        force=force,
    )


def check_keywords(model: Any, frontend_options: dict[str, Any]) -> None:
    """Refuse keyword arguments that neither ``compile`` nor the model's frontend takes, before
    any work (and before a cache hit could hide them), with the nearest known name.

    Raises:
        CompileError: naming the unknown argument and, where one is close, the intended one.
    """
    if not frontend_options:
        return
    import difflib
    import inspect

    from ai_vmm.frontends import FRONTEND_OPTIONS, detect_format

    own = [
        p for p in inspect.signature(compile).parameters if p not in ("model", "frontend_options")
    ]
    try:
        kind = detect_format(model)
    except Exception:  # an unknown source: load_model reports it properly
        return
    allowed = FRONTEND_OPTIONS[kind]
    unknown = sorted(set(frontend_options) - allowed)
    if not unknown:
        return
    elsewhere = set().union(*FRONTEND_OPTIONS.values())
    misplaced = [name for name in unknown if name in elsewhere]
    if misplaced:
        takes = ", ".join(sorted(allowed)) if allowed else "none"
        raise CompileError(
            f"option(s) {', '.join(misplaced)} do not apply to a {kind} source "
            f"(its frontend takes: {takes})"
        )
    known = sorted({*own, *allowed})
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise CompileError(
        f"ai_vmm.compile got unknown keyword argument(s) {', '.join(hints)}; it takes "
        f"{', '.join(own)}"
        + (f", and for a {kind} source {', '.join(sorted(allowed))}" if allowed else "")
    )


def _drop_specs(limits: Sequence[str] | Mapping[str, float]) -> list[str]:
    if isinstance(limits, Mapping):
        return [f"{metric}={value}" for metric, value in limits.items()]
    return [limits] if isinstance(limits, str) else list(limits)


def load(path: str | Path) -> Any:
    """Load an artifact (same as ``ai_vmm.runtime.load``)."""
    from ai_vmm.runtime import load as runtime_load

    return runtime_load(path)


def analyze(model: Any) -> Any:
    """The architecture profile of a model (an ONNX path, ``ModelProto`` or ``onnx_ir.Model``).

    Labels with confidence and evidence, FLOPs by op class, parameters, activation memory,
    op histogram, dynamic dimensions: ``ai_vmm.passes.analyze.ModelProfile``. The model is
    loaded and canonicalized first, as ``compile`` does.
    """
    import onnx_ir as ir

    from ai_vmm.frontends import load_model
    from ai_vmm.passes.analyze import analyze as analyze_ir
    from ai_vmm.passes.canonicalize import canonicalize

    ir_model = model if isinstance(model, ir.Model) else load_model(model).model
    canonicalize(ir_model)
    return analyze_ir(ir_model)

"""OpenVINO quantization with NNCF: static INT8, accuracy-controlled INT8, weight-only INT8/INT4.

- Static INT8: ``nncf.quantize`` on the OpenVINO model. Transformers (the architecture profile's
  verdict, never the user's) get ``model_type=TRANSFORMER`` with the MIXED preset (symmetric
  weights, asymmetric activations: SmoothQuant and NNCF's attention handling come with it);
  everything else the PERFORMANCE preset. SmoothQuant is switched off when a weight constant
  feeds more than one op: it rescales a weight in place, which would corrupt the other user.
- Accuracy-controlled INT8: ``nncf.quantize_with_accuracy_control`` with the compiler's gate as
  the validation function. The gate returns a normalized drop (1.0 = exactly at the user's
  limit), so NNCF's metric is its negative and ``max_drop`` is 1.0 (absolute).
- Weight-only: ``nncf.compress_weights`` (INT8 asymmetric per channel; INT4 symmetric in groups,
  ``ratio`` of the layers in INT4 and the rest in INT8). Activations stay float; OpenVINO's CPU
  plugin decompresses on the fly.

What is reported as quantized is read back from the resulting model: a weighted op (convolution
or matmul with a constant operand) counts when its weight path holds a FakeQuantize or an integer
constant.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ai_vmm.runtime.errors import CompileError
from ai_vmm.targets.base import QuantizationRequest, Sample

WEIGHTED_TYPES = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"})
_PASS_THROUGH = frozenset(
    {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze"}
)
_INTEGER_TYPES = ("i8", "u8", "i4", "u4", "nf4", "f4e2m1", "i2", "u2")
DEFAULT_INT4_GROUP = 128


@dataclass
class NncfResult:
    """The compressed OpenVINO model and what happened to it."""

    model: Any
    method: str
    kept_float: dict[str, str]
    notes: list[str]


def quantize_model(ov_model: Any, request: QuantizationRequest) -> NncfResult:
    """Apply the request to an OpenVINO model with NNCF; return the new model and the record."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    # NNCF draws progress bars on stdout, where the CLI prints only its result line.
    with contextlib.redirect_stdout(io.StringIO()):
        return _dispatch(ov_model, request)


def _dispatch(ov_model: Any, request: QuantizationRequest) -> NncfResult:
    if request.activations == "int8":
        return _static_int8(ov_model, request)
    if request.activations is not None:
        raise CompileError(
            f"--quantize {request.activations} is not offered for openvino "
            "(use --quantize int8, or --weights int8: OpenVINO's CPU plugin then quantizes "
            "activations dynamically on its own)"
        )
    if request.weights is not None:
        return _weights_only(ov_model, request)
    return NncfResult(ov_model, f"inference precision hint {request.precision}", {}, [])


def _static_int8(ov_model: Any, request: QuantizationRequest) -> NncfResult:
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    if not request.calibration:
        raise CompileError("static INT8 needs calibration samples")
    ignored = map_ignored(ov_model, request.ignored_nodes)
    notes: list[str] = []
    shared = shared_weight_ops(ov_model)
    advanced = AdvancedQuantizationParameters()
    if shared and request.transformer:
        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)
        )
        notes.append(
            f"SmoothQuant off: {len(shared)} weight constants feed several ops "
            f"(e.g. {sorted(shared)[0]}); rescaling one would change the others"
        )
    kwargs: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.MIXED
        if request.transformer
        else nncf.QuantizationPreset.PERFORMANCE,
        "subset_size": len(request.calibration),
        "ignored_scope": nncf.IgnoredScope(names=sorted(ignored), validate=False)
        if ignored
        else None,
    }
    if request.transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    preset = "transformer (model_type=TRANSFORMER, MIXED)" if request.transformer else "PERFORMANCE"
    calibration = nncf.Dataset(list(request.calibration))
    if request.accuracy is None:
        quantized = nncf.quantize(ov_model, calibration, advanced_parameters=advanced, **kwargs)
        method = f"nncf.quantize, preset {preset}"
    else:
        check = request.accuracy
        outputs = check.output_names
        items = list(enumerate(check.samples))

        def validate(compiled: Any, data: Iterable[tuple[int, Sample]]) -> float:
            indices: list[int] = []
            results: list[Sample] = []
            for index, sample in data:
                raw = compiled(sample)
                results.append(
                    {name: raw[port] for name, port in zip(outputs, compiled.outputs, strict=True)}
                )
                indices.append(index)
            # NNCF divides by the float model's metric in places: keep it away from zero.
            return 1.0 - check.score(results, indices)

        quantized = nncf.quantize_with_accuracy_control(
            ov_model,
            calibration,
            nncf.Dataset(items, lambda item: item[1]),
            validate,  # type: ignore[arg-type]
            max_drop=1.0,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=advanced,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                ranking_subset_size=min(len(items), 100)
            ),
            **kwargs,
        )
        method = f"nncf.quantize_with_accuracy_control, preset {preset}"
    weighted = sorted(weighted_ops(quantized))
    kept = {name: why for name, why in ignored.items() if name in weighted}
    for name in weighted:
        if name not in kept and not is_quantized(quantized, name):
            kept[name] = (
                "left float by NNCF's accuracy control"
                if request.accuracy is not None
                else "not quantized by NNCF"
            )
    return NncfResult(quantized, method, kept, notes)


def _weights_only(ov_model: Any, request: QuantizationRequest) -> NncfResult:
    import nncf

    kwargs: dict[str, Any] = {}
    if request.weights == "int8":
        mode = nncf.CompressWeightsMode.INT8_ASYM
        method = "nncf.compress_weights INT8_ASYM (per channel)"
    elif request.weights == "int4":
        mode = nncf.CompressWeightsMode.INT4_SYM
        group = request.group_size or DEFAULT_INT4_GROUP
        ratio = 1.0 if request.ratio is None else request.ratio
        kwargs = {"group_size": group, "ratio": ratio}
        if request.calibration and ratio < 1.0:
            # With data, NNCF ranks layers by activation-weighted error to pick the INT8 ones.
            kwargs["dataset"] = nncf.Dataset(list(request.calibration))
            kwargs["subset_size"] = len(request.calibration)
        method = f"nncf.compress_weights INT4_SYM, group size {group}, ratio {ratio}"
    else:
        raise CompileError(f"unknown weight compression '{request.weights}' (int8 or int4)")
    ignored = map_ignored(ov_model, request.ignored_nodes)
    try:
        compressed = nncf.compress_weights(
            ov_model,
            mode=mode,
            ignored_scope=nncf.IgnoredScope(names=sorted(ignored), validate=False)
            if ignored
            else None,
            **kwargs,
        )
    except nncf.errors.InvalidGroupSizeError as exc:  # type: ignore[attr-defined]
        raise CompileError(f"--group-size {kwargs.get('group_size')}: {exc}") from exc
    weighted = sorted(weighted_ops(compressed))
    kept = {name: why for name, why in ignored.items() if name in weighted}
    for name in weighted:
        if name not in kept and not is_quantized(compressed, name):
            kept[name] = "not compressed by NNCF (too small, or not a weight of a matmul)"
    return NncfResult(compressed, method, kept, [])


def map_ignored(ov_model: Any, nodes: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """ONNX node names -> the OpenVINO ops they became (same name, or ``name/...`` for the
    pieces of a decomposed node such as Gemm -> MatMul + Add)."""
    ops = [
        (op.get_friendly_name(), {t for out in op.outputs() for t in out.get_names()})
        for op in ov_model.get_ordered_ops()
        if op.get_type_name() not in ("Parameter", "Result", "Constant")
    ]
    found: dict[str, str] = {}
    for onnx_name, why in nodes:
        for name, tensors in ops:
            # An op that produces a graph output is named after that output by the frontend.
            if name == onnx_name or name.startswith(onnx_name + "/") or onnx_name in tensors:
                found[name] = why
    return found


def weighted_ops(ov_model: Any) -> list[str]:
    """Friendly names of convolutions and matmuls that have a constant (weight) operand."""
    found = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in WEIGHTED_TYPES:
            continue
        if any(_constant_root(op.input_value(i).get_node()) is not None for i in range(2)):
            found.append(op.get_friendly_name())
    return found


def quantized_ops(ov_model: Any) -> list[str]:
    """The weighted ops whose weights are stored or computed in low precision."""
    return [name for name in weighted_ops(ov_model) if is_quantized(ov_model, name)]


def is_quantized(ov_model: Any, name: str) -> bool:
    """Whether the weighted op ``name`` has a FakeQuantize or an integer constant upstream."""
    for op in ov_model.get_ops():
        if op.get_friendly_name() != name:
            continue
        for i in range(min(2, op.get_input_size())):
            if _low_precision_path(op.input_value(i).get_node()):
                return True
        return False
    return False


def shared_weight_ops(ov_model: Any) -> set[str]:
    """Names of weight constants read by more than one op (through converts/reshapes)."""
    readers: dict[str, int] = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in WEIGHTED_TYPES | {"Gather"}:
            continue
        for i in range(min(2, op.get_input_size())):
            root = _constant_root(op.input_value(i).get_node())
            if root is not None and _size(root) > 1024:
                key = root.get_friendly_name()
                readers[key] = readers.get(key, 0) + 1
    return {name for name, count in readers.items() if count > 1}


def _constant_root(node: Any, depth: int = 0) -> Any:
    kind = node.get_type_name()
    if kind == "Constant":
        return node
    if kind in _PASS_THROUGH | {"FakeQuantize"} and depth < 8:
        return _constant_root(node.input_value(0).get_node(), depth + 1)
    return None


def _low_precision_path(node: Any, depth: int = 0) -> bool:
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return str(node.get_output_element_type(0).get_type_name()) in _INTEGER_TYPES
    if kind in _PASS_THROUGH and depth < 8:
        return any(
            _low_precision_path(node.input_value(i).get_node(), depth + 1)
            for i in range(node.get_input_size())
        )
    return False


def _size(constant: Any) -> int:
    shape = constant.get_output_partial_shape(0)
    if not shape.is_static:
        return 0
    total = 1
    for dim in shape.to_shape():
        total *= int(dim)
    return total

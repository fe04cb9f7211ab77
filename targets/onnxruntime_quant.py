"""ONNX Runtime quantization: static Q/DQ INT8, dynamic INT8, MatMulNBits weights, float16.

- Static INT8: ``onnxruntime.quantization.quantize_static`` in QDQ format, uint8 activations and
  int8 per-channel weights (ONNX Runtime's CPU guidance); ``reduce_range`` (7-bit weights) on
  CPUs without VNNI, where 8-bit products can saturate the 16-bit accumulation of AVX2. The
  transformer preset quantizes only matmuls and gemms with a constant weight
  (``MatMulConstBOnly``): the attention matmuls around the softmax, layer norms and the residual
  adds stay float. Calibration ranges are computed once (``calibration_cache_path``), so the
  sensitivity search re-quantizes without running calibration again.
- Sensitivity search (when the accuracy gate fails): each quantized layer is left float on its
  own and the held-out gate scored; layers are then kept float in order of how much leaving them
  float helped, until the gate passes or half of the layers are float.
- Dynamic INT8: ``quantize_dynamic`` (weights int8, activations quantized per call).
- Weight-only: ``MatMulNBitsQuantizer`` (4 or 8 bits, blocks of ``group_size``) for matmuls.
- float16: ``onnxruntime.transformers.float16.convert_float_to_float16`` with float32 inputs and
  outputs kept (casts at the edges).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ai_vmm.runtime.errors import CompileError
from ai_vmm.targets.base import QuantizationRequest, Sample

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
TRANSFORMER_OPS = ("MatMul", "Gemm")
DEFAULT_NBITS_BLOCK = 128
RANKING_SAMPLES = 32
MAX_FLOAT_SHARE = 0.5


@dataclass
class OrtQuantResult:
    """The written model and what happened to it."""

    method: str
    kept_float: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def quantize_onnx(
    source: Path, target: Path, request: QuantizationRequest, work: Path
) -> OrtQuantResult:
    """Write ``request`` applied to the ONNX model ``source`` into ``target``."""
    logging.getLogger("root").setLevel(logging.ERROR)  # quantize_* log through the root logger
    external = source.with_name(source.name + ".data").exists()
    if request.activations == "int8":
        return _static(source, target, request, work, external)
    if request.activations == "int8-dynamic":
        return _dynamic(source, target, request, external)
    if request.activations is not None:
        raise CompileError(f"unknown --quantize mode '{request.activations}'")
    if request.weights is not None:
        return _nbits(source, target, request, external)
    if request.precision == "fp16":
        return _float16(source, target, request, external)
    raise CompileError(
        f"precision {request.precision} is not offered for onnxruntime "
        "(its CPU kernels have no bfloat16 path; use fp16, or the openvino target)"
    )


def weighted_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of convolutions / matmuls / gemms whose second input is an initializer."""
    constants = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in constants
    ]


def float_nodes(model: onnx.ModelProto) -> set[str]:
    """Weighted nodes of ``model`` whose weight is still a float32 initializer."""
    floats = {
        init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT
    }
    return {
        node.name
        for node in model.graph.node
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in floats
    }


def _static(
    source: Path, target: Path, request: QuantizationRequest, work: Path, external: bool
) -> OrtQuantResult:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not request.calibration:
        raise CompileError("static INT8 needs calibration samples")
    vnni = bool(set(request.host_isa) & {"avx512_vnni", "avx_vnni", "amx_int8"})
    model = onnx.load(str(source), load_external_data=False)
    candidates = weighted_nodes(model)
    ignored = {name: why for name, why in request.ignored_nodes if name in set(candidates)}
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    op_types: list[str] | None = None
    if request.transformer:
        op_types = list(TRANSFORMER_OPS)
        extra["MatMulConstBOnly"] = True
    cache = work / "calibration.json"

    def write(excluded: dict[str, str], out: Path) -> None:
        quantize_static(
            str(source),
            str(out),
            _Reader(request.calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=True,
            reduce_range=not vnni,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(excluded),
            use_external_data_format=external,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=extra,
            calibration_cache_path=str(cache),
        )

    preset = "transformer (MatMul/Gemm with constant weights)" if request.transformer else "all ops"
    method = (
        f"onnxruntime.quantization.quantize_static QDQ, u8 activations, s8 per-channel weights"
        f"{', reduce_range (no VNNI)' if not vnni else ''}, preset {preset}"
    )
    write(ignored, target)
    kept = dict(ignored)
    notes: list[str] = []
    if request.accuracy is not None:
        kept, notes = _sensitivity_search(write, target, request, candidates, ignored, work)
        method += ", sensitivity search"
    quantized_model = onnx.load(str(target), load_external_data=False)
    still_float = float_nodes(quantized_model)
    for name in candidates:
        if name in still_float and name not in kept:
            kept[name] = "not quantized by ONNX Runtime (op type outside the preset)"
    return OrtQuantResult(method, kept, notes)


def _sensitivity_search(
    write: Any,
    target: Path,
    request: QuantizationRequest,
    candidates: list[str],
    ignored: dict[str, str],
    work: Path,
) -> tuple[dict[str, str], list[str]]:
    """Keep the layers whose quantization costs the most accuracy in float, fewest first."""
    check = request.accuracy
    assert check is not None
    quantized_now = [
        n for n in candidates if n not in float_nodes(onnx.load(str(target))) and n not in ignored
    ]
    ranking_indices = list(range(min(RANKING_SAMPLES, len(check.samples))))
    all_indices = list(range(len(check.samples)))
    base = _score(target, check.samples, all_indices, check.output_names, check.score)
    if base <= 1.0:
        return dict(ignored), [f"gate score {base:.3f} with every layer quantized"]
    trial = work / "trial.onnx"
    gains: list[tuple[float, str]] = []
    for name in quantized_now:
        write({**ignored, name: "trial"}, trial)
        gains.append(
            (_score(trial, check.samples, ranking_indices, check.output_names, check.score), name)
        )
    gains.sort()
    limit = max(1, math.floor(MAX_FLOAT_SHARE * len(quantized_now)))
    kept = dict(ignored)
    score = base
    for rank, (_, name) in enumerate(gains[:limit], start=1):
        kept[name] = f"accuracy restoration: sensitivity rank {rank} of {len(gains)}"
        write(kept, target)
        score = _score(target, check.samples, all_indices, check.output_names, check.score)
        if score <= 1.0:
            break
    notes = [
        f"sensitivity search: gate score {base:.3f} with every layer quantized, {score:.3f} with "
        f"{len(kept) - len(ignored)} of {len(quantized_now)} layers float"
    ]
    return kept, notes


def _score(
    path: Path,
    samples: tuple[Sample, ...],
    indices: list[int],
    outputs: tuple[str, ...],
    score: Any,
) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    results = [
        dict(zip(outputs, session.run(list(outputs), samples[i]), strict=True)) for i in indices
    ]
    return float(score(results, indices))


def _dynamic(
    source: Path, target: Path, request: QuantizationRequest, external: bool
) -> OrtQuantResult:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source), load_external_data=False)
    candidates = set(weighted_nodes(model))
    ignored = {name: why for name, why in request.ignored_nodes if name in candidates}
    quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=list(TRANSFORMER_OPS),
        per_channel=False,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=sorted(ignored),
        use_external_data_format=external,
        extra_options={"MatMulConstBOnly": True},
    )
    return OrtQuantResult(
        "onnxruntime.quantization.quantize_dynamic, s8 weights (MatMul/Gemm)", dict(ignored)
    )


def _nbits(
    source: Path, target: Path, request: QuantizationRequest, external: bool
) -> OrtQuantResult:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    bits = {"int8": 8, "int4": 4}.get(request.weights or "")
    if bits is None:
        raise CompileError(f"unknown weight compression '{request.weights}' (int8 or int4)")
    if request.ratio is not None and request.ratio != 1.0:
        raise CompileError("--ratio is an NNCF option: use the openvino target for mixed INT4/INT8")
    block = request.group_size or DEFAULT_NBITS_BLOCK
    if block < 16 or block & (block - 1):
        raise CompileError(f"--group-size {block}: ONNX Runtime needs a power of two >= 16")
    model = onnx.load(str(source))
    candidates = set(weighted_nodes(model))
    ignored = {name: why for name, why in request.ignored_nodes if name in candidates}
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block, is_symmetric=True, nodes_to_exclude=sorted(ignored)
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=external)
    return OrtQuantResult(
        f"onnxruntime MatMulNBitsQuantizer, {bits} bits, symmetric, block size {block}",
        dict(ignored),
    )


def _float16(
    source: Path, target: Path, request: QuantizationRequest, external: bool
) -> OrtQuantResult:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    if external:
        onnx.save(
            converted, str(target), save_as_external_data=True, location=target.name + ".data"
        )
    else:
        onnx.save(converted, str(target))
    return OrtQuantResult("onnxruntime.transformers.float16, float32 inputs/outputs kept")


class _Reader:
    """``CalibrationDataReader`` over a list of samples (restartable, as ORT expects)."""

    def __init__(self, samples: tuple[Sample, ...]) -> None:
        self._samples = samples
        self._iter: Iterator[Sample] = iter(samples)

    def get_next(self) -> Sample | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

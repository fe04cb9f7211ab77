"""OpenVINO for causal LMs: the exported decoder step made stateful, weights optionally compressed.

Stateful, as optimum-intel and OpenVINO GenAI build theirs: a ``beam_idx`` parameter and a
``Gather`` in front of every past key/value input (rows can leave or be reordered without a
copy), then OpenVINO's own ``MakeStateful`` transformation turns each past/present pair into a
variable, and the variables start from zeros shaped by the batch of ``input_ids``. OpenVINO's
CPU plugin then fuses ``ReadValue -> Gather -> Concat -> ScaledDotProductAttention -> Assign``
into one attention node that keeps the cache (``StatefulSDPAFusion``); ``fused_attention``
counts them in the compiled model so the report shows whether it happened. Reshapes whose
target shape the exporter computes from the inputs' shapes get constant ones
(``_constant_reshapes``), as in optimum-intel's export.

Weight-only compression uses NNCF's ``compress_weights`` on the stateful model: INT8 (symmetric,
per channel) or INT4 (asymmetric, groups) with a share of the layers kept in INT8 (``ratio``),
chosen by NNCF's sensitivity metric on calibration text (data-aware: AWQ and scale estimation
too, ``compress``). The embedding table and the LM head
stay INT8 under INT4 (NNCF's default ``all_layers=False``). INT8 is symmetric (no zero point)
because decoding with INT8 weights on an AVX2 CPU is bound by the weights' decompression, not
by memory: SmolLM2 decoded 3-9 % faster than with NNCF's asymmetric default, and its
perplexity on the gate's text was no worse (-0.07 % against +0.05 % from the float model).
INT4 is asymmetric (a zero point per group, NNCF's and optimum-intel's default): on SmolLM2
(data-aware, groups of 32; 2026-12-06, 2-core Xeon) symmetric INT4 kept the gate's answers
with 40 % of the layers in INT4 (at 100 %: agreement 0.29, two replies looping), asymmetric
with 80 % (agreement 0.52, perplexity +7.0 %; at 100 %: agreement 0.51 but perplexity
+10.4 %, over the gate's 10 %), and decoded no slower (77.0 against 71.7 tok/s, 8
interleaved rounds, spreads overlapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import CompileError

DEFAULT_INT4_GROUP = 32
"""Groups of 32 (NNCF's default is 128, which SmolLM2's hidden size 576 does not divide): on
SmolLM2, data-aware INT4 passed the quality gate with 60 % of the layers in INT4 in groups of
32 (perplexity +2.3 %) and with 40 % in groups of 64 (+3.7 %), at the same decode speed
(symmetric INT4, an earlier session). Asymmetric INT4 (2026-12-06): 80 % in groups of
32, 20 % in groups of 64 (perplexity +2.1 %; agreement at 40 % only 0.47)."""


@dataclass(frozen=True)
class WeightCompression:
    """``mode``: ``int8`` or ``int4``; for INT4 the group size and the share of the weight
    layers in INT4 (the rest INT8, the most sensitive ones by NNCF's metric)."""

    mode: str
    group_size: int = DEFAULT_INT4_GROUP
    ratio: float = 1.0
    data_aware: bool = False
    """Calibrated on real text (``compress``'s ``windows``): AWQ, scale estimation and the
    activation-based choice of the layers kept INT8."""

    def describe(self) -> str:
        if self.mode == "int8":
            return "INT8 symmetric per channel (nncf.compress_weights INT8_SYM)"
        how = (
            "data-aware (AWQ, scale estimation, activation sensitivity)"
            if self.data_aware
            else "data-free"
        )
        return (
            f"INT4 asymmetric, group {self.group_size}, ratio {self.ratio:g}, {how} "
            f"(embedding and LM head INT8)"
        )


def capabilities(device: str) -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of ``device`` (``BF16``, ``FP16``, ``INT8``...)."""
    import openvino as ov

    try:
        return [str(c) for c in ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except Exception:
        return []


def stateful_model(onnx_path: Path, layers: int) -> Any:
    """Read the exported decoder and make it stateful (see the module doc)."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    try:
        model = ov.Core().read_model(str(onnx_path))
    except Exception as exc:
        raise CompileError(f"OpenVINO cannot read the exported decoder: {exc}") from exc
    pairs = {
        f"past.{i}.{kv}": f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")
    }
    beam = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    model.add_parameters([beam])
    for name in pairs:
        port = model.input(name)
        consumers = list(port.get_target_inputs())
        gather = ops.gather(port, beam, ops.constant(np.int64(0)))
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    model.validate_nodes_and_infer_types()
    _float_masks(model)
    _drop_nan_guards(model)
    _weights_output_major(model)
    apply_make_stateful_transformation(model, pairs)
    batch = ops.gather(
        ops.shape_of(model.input("input_ids"), output_type="i64"),
        ops.constant(np.array([0], dtype=np.int64)),
        ops.constant(np.int64(0)),
    )
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        dims: list[Any] = []
        for axis, dim in enumerate(op.get_output_partial_shape(0)):
            if axis == 0:
                dims.append(batch)
            else:
                size = dim.get_length() if dim.is_static else 0  # the sequence axis starts empty
                dims.append(ops.constant(np.array([size], dtype=np.int64)))
        zeros = ops.broadcast(
            ops.constant(np.float32(0.0), dtype=op.get_output_element_type(0)),
            ops.concat(dims, 0),
        )
        op.set_arguments([zeros])
    model.validate_nodes_and_infer_types()
    _constant_reshapes(model)
    return model


def _constant_reshapes(model: Any) -> int:
    """Give every ``Reshape`` whose target shape is computed at run time a constant one.

    The exporter writes ``view(batch, seq, -1, head_dim)`` with ``batch`` read off the shape of
    ``past.0.key`` and ``seq`` off ``input_ids`` (torch.export's symbols name graph inputs), so
    180 of SmolLM2's reshapes hung on ``ShapeOf -> Slice -> Concat`` subgraphs and the CPU plugin
    inferred their output shapes from values at every step; optimum-intel's export has
    constants there (``[0, 0, -1, 64]``, ``0`` copying the input's dimension). Under the
    decoder's contract (one batch for ``input_ids``, ``position_ids``, ``attention_mask`` and
    ``beam_idx``, one length for ``input_ids`` and ``position_ids``) the inputs get shared
    OpenVINO symbols; shape inference carries them through the graph, and an output dimension
    whose symbol is the input's at the same axis becomes ``0``, a static one its length, and a
    single remaining one ``-1``. A reshape with anything left over keeps its subgraph. The
    symbols are removed again (they are not saved, and nothing else should lean on them).

    OpenVINO's own symbolic ``ReshapeOptimizations`` (inside ``apply_moc_transformations``)
    does the same once the inputs share symbols, but only as part of the whole MOC pipeline
    (without them it resolves 90 of the 180); this keeps the rewrite to the reshapes.

    Returns:
        How many reshapes got a constant shape.
    """
    import openvino as ov
    from openvino import opset13 as ops

    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    plain = {name: p.get_partial_shape() for name, p in params.items()}
    batch, seq = ov.Symbol(), ov.Symbol()
    axes = {
        "input_ids": (batch, seq),
        "position_ids": (batch, seq),
        "attention_mask": (batch, None),
        "beam_idx": (batch,),
    }
    for name, symbols in axes.items():
        if name not in params:
            continue
        shape = params[name].get_partial_shape()
        dims = [shape[i] for i in range(len(shape))]
        for dim, shared in zip(dims, symbols, strict=False):
            if shared is not None and dim.is_dynamic:
                dim.set_symbol(shared)
        params[name].set_partial_shape(ov.PartialShape(dims))
    model.validate_nodes_and_infer_types()

    def symbol(shape: Any, axis: int) -> Any:
        return shape[axis].get_symbol() if shape[axis].has_symbol() else None

    rewritten = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Reshape":
            continue
        if op.input_value(1).get_node().get_type_name() == "Constant":
            continue
        source, target = op.input_value(0).get_partial_shape(), op.get_output_partial_shape(0)
        if source.rank.is_dynamic or target.rank.is_dynamic:
            continue
        pattern: list[int] = []
        for axis in range(len(target)):
            dim = target[axis]
            mine = symbol(target, axis)
            if dim.is_static and dim.get_length() > 0:
                pattern.append(dim.get_length())
            elif mine is not None and axis < len(source) and mine == symbol(source, axis):
                pattern.append(0)
            else:
                pattern.append(-1)
        if pattern.count(-1) > 1 or 0 in [d.get_length() for d in target if d.is_static]:
            continue
        replacement = ops.reshape(
            op.input_value(0), ops.constant(np.array(pattern, dtype=np.int64)), special_zero=True
        )
        replacement.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(replacement.output(0))
        rewritten += 1
    for name, shape in plain.items():
        params[name].set_partial_shape(shape)
    model.validate_nodes_and_infer_types()
    return rewritten


def _float_masks(model: Any) -> None:
    """Give every attention an additive float mask instead of a boolean one.

    The exporter's boolean mask sends OpenVINO's CPU attention down a slow path: SmolLM2's
    400-token prefill spent 1,150 ms in attention with it, 260 ms with the float mask
    optimum-intel's exports carry. Masked positions get float32's lowest value, not -inf,
    so a row with nothing to attend to (a padding query) stays finite instead of NaN.
    """
    import openvino as ov
    from openvino import opset13 as ops

    converted: dict[Any, Any] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "ScaledDotProductAttention" or op.get_input_size() < 4:
            continue
        mask = op.input_value(3)
        if mask.get_element_type() != ov.Type.boolean:
            continue
        key = (mask.get_node(), mask.get_index())
        if key not in converted:
            dtype = op.input_value(0).get_element_type()
            lowest = np.finfo(np.float32).min
            converted[key] = ops.select(
                mask, ops.constant(np.float32(0.0), dtype=dtype), ops.constant(lowest, dtype=dtype)
            ).output(0)
        op.input(3).replace_source_output(converted[key])
    model.validate_nodes_and_infer_types()


def _drop_nan_guards(model: Any) -> None:
    """Remove ``Select(IsNaN(attention), 0, attention)`` after each attention.

    The exporter guards against rows with nothing to attend to, whose softmax over ``-inf``
    is NaN. With the finite masks of ``_float_masks`` such a row is a plain average, never
    NaN, so the guard (two nodes a layer, run at every step) has nothing left to catch.
    """
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Select":
            continue
        test, value = op.input_value(0).get_node(), op.input_value(2)
        if (
            test.get_type_name() == "IsNaN"
            and test.input_value(0) == value
            and value.get_node().get_type_name() == "ScaledDotProductAttention"
        ):
            op.output(0).replace(value)
    model.validate_nodes_and_infer_types()


def _weights_output_major(model: Any) -> None:
    """Store every constant MatMul weight as ``[out, in]`` with ``transpose_b``.

    The exporter writes ``x @ W.T`` as a MatMul on an ``[in, out]`` constant (and the tied LM
    head as a MatMul on ``Transpose(embedding)``); OpenVINO's CPU plugin then keeps a
    ``Transpose`` in front of every fully connected layer. Stored ``[out, in]``, the layout
    ``torch.nn.Linear`` and optimum-intel's exports have, SmolLM2's per-layer fully connected
    time at decode fell by about a sixth; NNCF then also quantizes the row layout its
    kernels expect. The tied LM head reads the embedding table itself, so it stays one copy.
    """
    from openvino import opset13 as ops

    copies: dict[str, Any] = {}  # a constant shared by several MatMuls is transposed once
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or op.get_attributes()["transpose_b"]:
            continue
        weight = op.input_value(1).get_node()
        if weight.get_type_name() == "Transpose" and _is_swap(weight.input_value(1).get_node()):
            source = weight.input_value(0)
            if source.get_node().get_type_name() != "Constant":
                continue
            transposed = source
        elif weight.get_type_name() == "Constant" and len(weight.get_output_shape(0)) == 2:
            if weight.get_name() not in copies:
                copies[weight.get_name()] = ops.constant(
                    np.ascontiguousarray(weight.get_data().T)
                ).output(0)
            transposed = copies[weight.get_name()]
        else:
            continue
        if len(transposed.get_shape()) != 2:
            continue
        replacement = ops.matmul(
            op.input_value(0),
            transposed,
            transpose_a=bool(op.get_attributes()["transpose_a"]),
            transpose_b=True,
        )
        replacement.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(replacement.output(0))
    model.validate_nodes_and_infer_types()


def _is_swap(order: Any) -> bool:
    return order.get_type_name() == "Constant" and [int(v) for v in order.get_data()] == [1, 0]


def calibration_dataset(windows: Sequence[Sequence[int]]) -> Any:
    """An ``nncf.Dataset`` of prefill steps of the stateful decoder, one per token window (NNCF
    resets the model's state before each item, so each is a fresh prompt)."""
    import nncf

    items = []
    for window in windows:
        seq = len(window)
        items.append(
            {
                "input_ids": np.array([window], dtype=np.int64),
                "attention_mask": np.ones((1, seq), dtype=np.int64),
                "position_ids": np.arange(seq, dtype=np.int64)[None],
                "logit_index": np.array([seq - 1], dtype=np.int64),
                "beam_idx": np.zeros(1, dtype=np.int32),
            }
        )
    return nncf.Dataset(items)


def compress(
    model: Any,
    compression: WeightCompression,
    windows: Sequence[Sequence[int]] | None = None,
    statistics: Path | None = None,
) -> Any:
    """Weight-only compression of the stateful model with NNCF.

    With calibration ``windows`` (token ids of real text) INT4 is data-aware, as optimum-intel's
    ``--awq --scale-estimation --dataset``: the layers kept INT8 are those whose inputs'
    activations make INT4 hurt most (NNCF's ``HESSIAN_INPUT_ACTIVATION``), AWQ rescales the
    channels that carry large activations before rounding, and scale estimation refits each
    group's scale to the layer's outputs on those activations. Without windows it is
    data-free: the layers whose weights INT4 distorts most stay INT8. ``statistics``: a
    directory where NNCF keeps the activation statistics, so that the next attempt on the same
    model and windows (another ratio) does not run the calibration again.

    Raises:
        CompileError: NNCF refuses the settings (the message quotes it).
    """
    import nncf

    if compression.mode == "int8":
        kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode.INT8_SYM}
    elif compression.mode == "int4":
        kwargs = {
            "mode": nncf.CompressWeightsMode.INT4_ASYM,
            "group_size": compression.group_size,
            "ratio": compression.ratio,
            "backup_mode": nncf.BackupMode.INT8_SYM,  # the layers kept INT8, as above
        }
        if windows:
            kwargs.update(
                dataset=calibration_dataset(windows),
                subset_size=len(windows),
                awq=True,
                scale_estimation=True,
                sensitivity_metric=nncf.SensitivityMetric.HESSIAN_INPUT_ACTIVATION,
            )
            if statistics is not None:
                from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

                kwargs["advanced_parameters"] = AdvancedCompressionParameters(
                    statistics_path=str(statistics)
                )
        elif compression.ratio < 1.0:
            kwargs["sensitivity_metric"] = nncf.SensitivityMetric.WEIGHT_QUANTIZATION_ERROR
    else:
        raise CompileError(f"unknown weight compression '{compression.mode}' (int8 or int4)")
    try:
        compressed = nncf.compress_weights(model, **kwargs)
    except Exception as exc:
        raise CompileError(f"NNCF weight compression failed: {exc}") from exc
    return compressed


def layer_precisions(model: Any) -> dict[str, str]:
    """The storage precision of each MatMul's weight (``f32``, ``u8``/``i8``, ``u4``/``i4``),
    by MatMul name, read off the graph (what NNCF actually did)."""
    found: dict[str, str] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Gather"):
            continue
        source = op.input_value(1 if op.get_type_name() == "MatMul" else 0).get_node()
        for _ in range(6):
            if source.get_type_name() == "Constant":
                found[op.get_friendly_name()] = source.get_output_element_type(0).get_type_name()
                break
            if source.get_type_name() not in ("Convert", "Multiply", "Subtract", "Reshape"):
                break
            source = source.input_value(0).get_node()
    return found


def save(model: Any, out_dir: Path) -> dict[str, Path]:
    """Write ``decoder.xml`` + ``decoder.bin`` (float weights stay float32)."""
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / "decoder.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return {"decoder.xml": xml, "decoder.bin": xml.with_suffix(".bin")}


def fused_attention(compiled: Any) -> dict[str, int]:
    """Attention nodes of a compiled model, and how many of them own their KV cache (read
    the ``MemoryInput`` of a variable directly): equal counts mean the stateful fusion worked
    for every layer."""

    def kind(node: Any) -> str:
        return str(node.get_rt_info()["layerType"].astype(str))

    attention = with_cache = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        if kind(op) == "ScaledDotProductAttention":
            attention += 1
            if any(kind(value.get_node()) == "MemoryInput" for value in op.input_values()):
                with_cache += 1
    return {"attention": attention, "attention_with_cache": with_cache}

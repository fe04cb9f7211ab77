"""What a cuda payload would cost at given shapes, before building it (seconds, not minutes).

``auto`` can ask this first and build the cuda candidate only where it could win: an
AOTInductor build takes 20-80 s, an estimate a fraction of a second. The model, per shape:

    kernels  = heavy nodes (conv, matmul, attention) + nodes that need their own pass over
               memory (normalizations, softmax, pooling, reductions, data movement);
               element-wise nodes are assumed fused into their neighbours (Inductor does);
               an LSTM/GRU/RNN is a loop: 2 kernels per time step and direction; a
               counted Loop launches its body's kernels every step
    heavy    = max(FLOPs / (peak * MATMUL_EFFICIENCY), bytes / (bandwidth * MEMORY_EFFICIENCY))
    memory   = bytes / (bandwidth * MEMORY_EFFICIENCY)
    each kernel takes at least KERNEL_FLOOR_US (launch gap in a CUDA graph, tail effects)
    call     = CALL_US with CUDA graphs (one launch), or overhead_us per kernel without
    transfer = (input + output bytes) / host link (NumPy in and out; 0 for GPU tensors)

Bytes count weights and activations at the payload's precision (float tensors at 2 bytes for
fp16/bf16). The numbers are a planning estimate, right to within about 2x on the models of
docs/gpu.md (that page compares them with measurements): use a margin when deciding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from ai_vmm.passes.concrete_shapes import concrete_copy
from ai_vmm.passes.flops import node_flops

MATMUL_EFFICIENCY = 0.55
"""Share of the measured peak a model's convolutions and matmuls reach (small and odd shapes)."""
MEMORY_EFFICIENCY = 0.6
"""Share of the measured copy bandwidth a kernel's reads and writes reach."""
KERNEL_FLOOR_US = 2.5
"""Least time a kernel takes inside a CUDA graph (launch gap and a partial wave)."""
CALL_US = 25.0
"""Host work of one call with CUDA graphs: input copy, graph launch, output copy, sync."""

HEAVY = frozenset(
    {"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "Attention", "LSTM", "GRU", "RNN"}
)
OWN_PASS = frozenset(
    {
        *("LayerNormalization", "RMSNormalization", "GroupNormalization"),
        *("InstanceNormalization", "Softmax", "LogSoftmax", "TopK", "CumSum"),
        *("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"),
        *("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2"),
        *("ArgMax", "ArgMin", "Gather", "GatherElements", "GatherND", "ScatterND"),
        *("Resize", "Pad", "Concat", "Split", "Transpose", "Tile", "NonZero"),
    }
)


def estimate(
    model: ir.Model,
    figures: Mapping[str, Any],
    precision: str,
    shapes: Sequence[Mapping[str, int]],
    *,
    graphs: bool = True,
    host_io: bool = True,
) -> list[dict[str, Any]]:
    """Estimated milliseconds per call at each of ``shapes``.

    Args:
        model: the (fused) ONNX model the cuda target would compile.
        figures: the GPU's figures (``peak_gflops`` per precision, ``bandwidth_gbps``,
            ``overhead_us``, optional ``link_gbps``), measured or from the datasheet.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        shapes: sizes of the symbolic input dims, one mapping per shape of interest
            (``{"batch": 32}``; names as ``ai_vmm.passes.concrete_shapes`` takes them).
        graphs: the payload replays CUDA graphs (one launch per call).
        host_io: inputs and outputs cross the host link (NumPy in and out).

    Returns:
        Per shape: ``dims``, ``ms`` (total), ``gpu_ms``, ``call_ms``, ``transfer_ms``,
        ``kernels``, ``gflop``, ``mb`` (bytes moved by kernels).
    """
    peaks = figures.get("peak_gflops") or {}
    peak = float(peaks.get(precision) or peaks.get("fp32") or 1.0) * 1e9
    bandwidth = float(figures.get("bandwidth_gbps") or 1.0) * 1e9
    overhead_us = float(figures.get("overhead_us") or 8.0)
    link = float(figures.get("link_gbps") or 0.0) * 1e9
    width = 2 if precision in ("fp16", "bf16") else 4
    out = []
    for dims in shapes:
        concrete = concrete_copy(model, dict(dims))
        sizes = concrete.dims.sizes
        kernels = 0
        flops_total = 0.0
        bytes_total = 0.0
        gpu_s = 0.0
        for node in concrete.model.graph:
            steps = _recurrent_kernels(node)
            if node.op_type in HEAVY:
                _, flops = node_flops(node, sizes)
                moved = _bytes(node, width)
                seconds = max(
                    flops / (peak * MATMUL_EFFICIENCY), moved / (bandwidth * MEMORY_EFFICIENCY)
                )
                if steps:  # a loop over time: each step's kernels take their floor at least
                    seconds = max(seconds, steps * KERNEL_FLOOR_US * 1e-6)
                    kernels += steps - 1
            elif node.op_type in OWN_PASS:
                flops = 0
                moved = _bytes(node, width)
                seconds = moved / (bandwidth * MEMORY_EFFICIENCY)
            elif node.op_type == "Loop" and (loop := _loop_kernels(node)):
                # A counted loop (a scan): its body's kernels every step, each at its floor
                # (such bodies are one time step of a small recurrent cell).
                flops, moved = 0, 0.0
                seconds = loop * KERNEL_FLOOR_US * 1e-6
                kernels += loop - 1
            else:
                continue
            kernels += 1
            flops_total += flops
            bytes_total += moved
            gpu_s += max(seconds, KERNEL_FLOOR_US * 1e-6)
        kernels = max(kernels, 1)
        call_s = CALL_US * 1e-6 if graphs else kernels * overhead_us * 1e-6
        io_bytes = sum(_value_bytes(v, 4) for v in concrete.model.graph.inputs) + sum(
            _value_bytes(v, 4) for v in concrete.model.graph.outputs
        )
        transfer_s = io_bytes / link if host_io and link > 0 else 0.0
        # With graphs the host work overlaps nothing on one call: it adds up.
        total = gpu_s + call_s + transfer_s
        out.append(
            {
                "dims": dict(sizes),
                "ms": round(total * 1e3, 4),
                "gpu_ms": round(gpu_s * 1e3, 4),
                "call_ms": round(call_s * 1e3, 4),
                "transfer_ms": round(transfer_s * 1e3, 4),
                "kernels": kernels,
                "gflop": round(flops_total / 1e9, 6),
                "mb": round(bytes_total / 1e6, 2),
            }
        )
    return out


RECURRENT_STEP_KERNELS = 2
"""Kernels per time step and direction of a converted LSTM/GRU/RNN (a ``scan``): the recurrent
matmul and the fused gates; the input projection of all steps is one matmul before the loop."""


def _recurrent_kernels(node: ir.Node) -> int:
    """Kernels an LSTM/GRU/RNN node launches (0 for other nodes, or an unknown length)."""
    if node.op_type not in ("LSTM", "GRU", "RNN") or not node.inputs or node.inputs[0] is None:
        return 0
    shape = node.inputs[0].shape
    layout = node.attributes["layout"].as_int() if "layout" in node.attributes else 0
    length = shape[1 if layout else 0] if shape is not None and len(shape) == 3 else None
    if not isinstance(length, int):
        return 0
    direction = node.attributes.get("direction")
    directions = 2 if direction is not None and direction.as_string() == "bidirectional" else 1
    return 1 + length * directions * RECURRENT_STEP_KERNELS


def _loop_kernels(node: ir.Node) -> int:
    """Kernels a counted ``Loop`` launches: its body's heavy and own-pass nodes (at least one)
    per step; 0 when the step count is not known at these shapes (a constant trip count, or
    the stacked outputs' leading size)."""
    trip = node.inputs[0] if node.inputs else None
    steps: int | None = None
    if trip is not None and trip.const_value is not None:
        steps = int(trip.const_value.numpy().reshape(-1)[0])
    else:
        carried = max(len(node.inputs) - 2, 0)
        for value in node.outputs[carried:]:
            if value.shape is not None and len(value.shape) and isinstance(value.shape[0], int):
                steps = value.shape[0]
                break
    body = node.attributes.get("body")
    if not steps or body is None:
        return 0
    per_step = sum(1 for inner in body.value if inner.op_type in HEAVY or inner.op_type in OWN_PASS)
    return steps * max(per_step, 1)


def _bytes(node: ir.Node, width: int) -> float:
    """Bytes a node reads and writes, float tensors at the payload's width."""
    return float(
        sum(_value_bytes(v, width) for v in [*node.inputs, *node.outputs] if v is not None)
    )


def _value_bytes(value: ir.Value, float_width: int) -> int:
    dims = [d for d in value.shape or () if isinstance(d, int)]
    if value.shape is None or len(dims) != len(value.shape):
        return 0
    dtype = value.dtype
    if dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
        itemsize = float_width
    else:
        try:
            itemsize = int(dtype.itemsize) if dtype is not None else 4
        except (AttributeError, TypeError, ValueError):
            itemsize = 4
    return int(math.prod(dims)) * itemsize

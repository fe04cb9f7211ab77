"""FLOPs, parameters and activation memory at concrete shapes.

A multiply-add counts as 2 FLOPs. Per node (``node_flops``), with ``B`` batch, ``N`` query
heads, ``S`` query length, ``L`` key length (past + new), ``D`` / ``Dv`` key / value head size:

======================  ======================================================================
op                      FLOPs
======================  ======================================================================
MatMul, Gemm, ...       ``2 * numel(out) * K`` (``K`` the contracted size)
Einsum                  ``2 * (operands - 1) * product of every index size``
Conv                    ``2 * numel(out) * C_in / group * prod(kernel)``
ConvTranspose           ``2 * numel(x) * C_out / group * prod(kernel)``
attention ops           ``2 * B * N * S * L * (D + Dv)`` for ``QK^T`` and ``PV``, plus
                        ``5 * B * N * S * L`` for the softmax; com.microsoft ``Attention``
                        adds its QKV projection ``2 * B * S * In * (3 * hidden)``
LSTM / GRU / RNN        ``2 * dirs * steps * B * gates * H * (In + H)``
Loop / Scan             the body's FLOPs times the trip count
normalizations          ``5 * numel(out)``; pooling: ``numel(x)``
element-wise            ``c * numel(out)``, ``c`` from ``ELEMENTWISE_COST`` (1 for
                        arithmetic, 4 for a transcendental, 5 for softmax, 8 for GELU)
======================  ======================================================================

The counts are only as good as the shapes: run them on ``concrete_shapes.concrete_copy``,
whose tensors all have concrete shapes (``count_flops`` does).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

from ai_vmm.passes.concrete_shapes import SEQUENCE_SIZE, ConcreteModel, nodes

CONV_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv"})
MATMUL_OPS = frozenset(
    {
        *("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "MatMulNBits"),
        *("FusedMatMul", "FusedGemm", "Einsum"),
    }
)
ATTENTION_OPS = frozenset(
    {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention"}
)
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
NORM_OPS = frozenset(
    {
        "BatchNormalization",
        "LayerNormalization",
        "RMSNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
    }
)
POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})
_SIMPLE_ELEMENTWISE = (
    *("Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "LeakyRelu", "PRelu", "Clip"),
    *("Max", "Min", "Sum", "Mean", "Where", "Sign", "Floor", "Ceil", "Round", "Reciprocal"),
    *("Sqrt", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "CumSum"),
    *("And", "Or", "Not", "Xor", "Mod"),
)
_TRANSCENDENTAL = (
    *("Sigmoid", "Tanh", "Exp", "Log", "Erf", "Sin", "Cos", "HardSigmoid", "HardSwish"),
    *("Elu", "Selu", "Softplus", "Softsign", "Mish"),
)
ELEMENTWISE_COST = {
    **{op: 1 for op in _SIMPLE_ELEMENTWISE},
    **{op: 4 for op in _TRANSCENDENTAL},
    **{op: 8 for op in ("Gelu", "FastGelu", "BiasGelu", "QuickGelu")},
    **{op: 5 for op in ("Softmax", "LogSoftmax")},
    **{op: 1 for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2")},
}
"""FLOPs per output element of element-wise and reduction-like ops (approximate)."""
SOFTMAX_COST = 5
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _dims(value: ir.Value | None, sizes: Mapping[str, int]) -> list[int] | None:
    """The value's shape with named symbolic dims replaced from ``sizes``; None if unknown."""
    if value is None or value.shape is None:
        return None
    dims = [d if isinstance(d, int) else sizes.get(str(d), -1) for d in value.shape]
    return None if any(d < 0 for d in dims) else dims


def numel(value: ir.Value | None, sizes: Mapping[str, int]) -> int:
    """Elements of ``value`` at ``sizes`` (0 when its shape is unknown)."""
    dims = _dims(value, sizes)
    return math.prod(dims) if dims is not None else 0


def node_flops(node: ir.Node, sizes: Mapping[str, int]) -> tuple[str, int]:
    """``(op class, FLOPs)`` of one node (0 FLOPs where shapes are unknown).

    Args:
        node: any node; its input/output shapes decide the count.
        sizes: the size of each named symbolic dimension still in the shapes (a node of a
            concrete copy has none left; a subgraph keeps its own names).
    """
    op = node.op_type
    out = _dims(node.outputs[0], sizes) if node.outputs else None
    inputs = [_dims(v, sizes) for v in node.inputs]
    if op in CONV_OPS:
        return "conv", _conv_flops(node, inputs, out)
    if op == "Einsum":
        return "matmul", _einsum_flops(node, inputs, out)
    if op in MATMUL_OPS:
        a = inputs[0] if inputs else None
        if a is None or out is None:
            return "matmul", 0
        k = a[-2] if node.attributes.get_int("transA", 0) and len(a) >= 2 else a[-1]
        return "matmul", 2 * math.prod(out) * k
    if op in ATTENTION_OPS:
        return "attention", _attention_flops(node, inputs)
    if op in RECURRENT_OPS:
        x, w, r = [*inputs, None, None, None][:3]
        if x is None or w is None or r is None:
            return "recurrent", 0
        steps, batch = (x[1], x[0]) if node.attributes.get_int("layout", 0) else (x[0], x[1])
        return "recurrent", 2 * w[0] * steps * batch * w[1] * (w[2] + r[2])
    if op in ("Loop", "Scan"):
        return "recurrent", _loop_flops(node, sizes)
    if op in NORM_OPS:
        return "normalization", 5 * numel(node.outputs[0], sizes)
    if op in POOL_OPS:
        return "pooling", numel(node.inputs[0], sizes) if node.inputs else 0
    if op in ELEMENTWISE_COST:
        return "elementwise", ELEMENTWISE_COST[op] * numel(node.outputs[0], sizes)
    return "other", 0


def _conv_flops(node: ir.Node, inputs: list[list[int] | None], out: list[int] | None) -> int:
    # QLinearConv: (x, x_scale, x_zero_point, w, ...); the others: (x, w, ...).
    w_index = 3 if node.op_type == "QLinearConv" else 1
    w = inputs[w_index] if len(inputs) > w_index else None
    if w is None or out is None:
        return 0
    if node.op_type == "ConvTranspose":
        x = inputs[0]
        return 2 * math.prod(x or [0]) * math.prod(w[1:])
    return 2 * math.prod(out) * math.prod(w[1:])


def _einsum_flops(node: ir.Node, inputs: list[list[int] | None], out: list[int] | None) -> int:
    equation = node.attributes.get_string("equation", "") or ""
    operands = equation.replace(" ", "").partition("->")[0].split(",")
    if len(operands) != len(inputs):
        return 0
    letters: dict[str, int] = {}
    for term, shape in zip(operands, inputs, strict=True):
        if shape is None:
            return 0
        if "..." in term:  # the ellipsis names the broadcast axes, aligned from its right end
            head, tail = term.split("...")
            broadcast = len(shape) - len(head) - len(tail)
            term = head + "".join(chr(0x100 + broadcast - i) for i in range(broadcast)) + tail
        if len(term) != len(shape):
            return 0
        for letter, size in zip(term, shape, strict=True):
            letters[letter] = max(letters.get(letter, 1), size)
    if len(operands) == 1:  # a transpose, trace or reduction reads each element once
        return math.prod(letters.values())
    return 2 * (len(operands) - 1) * math.prod(letters.values())


def _heads(node: ir.Node, *names: str) -> int:
    for name in names:
        value = node.attributes.get_int(name, 0)
        if value:
            return value
    return 1


def _attention_flops(node: ir.Node, inputs: list[list[int] | None]) -> int:
    """QK^T, softmax and PV of one attention op (and the QKV projection of com.microsoft's
    ``Attention``); 0 when a shape it needs is unknown."""
    contrib = node.domain == "com.microsoft"
    padded = [*inputs, *([None] * 8)]
    if contrib and node.op_type in ("Attention", "PackedAttention"):
        return _contrib_attention_flops(node, padded)
    q, k, v = padded[:3]
    if q is None:
        return 0
    heads = _heads(node, "q_num_heads", "num_heads")
    kv_heads = node.attributes.get_int("kv_num_heads", 0) or heads
    past_index = {"Attention": 4, "MultiHeadAttention": 6, "GroupQueryAttention": 3}
    past = padded[past_index.get(node.op_type, 4)]
    if len(q) == 4:  # [B, N, S, D]
        batch, heads, q_len, head = q
    elif len(q) == 5:  # com.microsoft packed QKV [B, S, N, 3, D]
        batch, q_len, heads, _, head = q
    elif k is None and node.op_type == "GroupQueryAttention":  # packed [B, S, (N + 2 Nkv) D]
        batch, q_len = q[0], q[1]
        head = q[2] // (heads + 2 * kv_heads)
    else:  # [B, S, N * D]
        batch, q_len, head = q[0], q[1], q[2] // heads
    if k is None or len(q) == 5:
        kv_len, v_head = q_len, head
    elif len(k) == 4:  # [B, Nkv, L, D]
        kv_len, v_head = k[2], (v[3] if v is not None and len(v) == 4 else head)
    elif len(k) == 5:  # packed KV [B, L, N, 2, D]
        kv_len, v_head = k[1], head
    else:  # [B, L, Nkv * D]
        kv_len = k[1]
        v_head = v[2] // kv_heads if v is not None else head
    if node.op_type == "GroupQueryAttention" and len(node.outputs) > 1:
        present = node.outputs[1].shape
        total = present[2] if present is not None and len(present) == 4 else None
        if isinstance(total, int):
            return _core_flops(batch, heads, q_len, total, head, v_head)
    if past is not None and len(past) >= 2:
        kv_len += past[-2]
    return _core_flops(batch, heads, q_len, kv_len, head, v_head)


def _contrib_attention_flops(node: ir.Node, inputs: list[list[int] | None]) -> int:
    """com.microsoft ``Attention``: ``input [B, S, In] @ weights [In, Dq + Dk + Dv]`` then
    attention over ``past [2, B, N, P, D]`` + S keys. ``PackedAttention`` takes tokens
    ``[T, In]`` with no batch: counted as one sequence of T (an upper bound)."""
    x, w = inputs[0], inputs[1]
    if x is None or w is None:
        return 0
    heads = _heads(node, "num_heads")
    batch, q_len = (x[0], x[1]) if len(x) == 3 else (1, x[0])
    sizes = node.attributes.get_ints("qkv_hidden_sizes", None) or [w[1] // 3] * 3
    head, v_head = sizes[0] // heads, sizes[2] // heads
    past = inputs[4] if node.op_type == "Attention" else None
    kv_len = q_len + (past[-2] if past is not None and len(past) == 5 else 0)
    projection = 2 * batch * q_len * w[0] * w[1]
    return projection + _core_flops(batch, heads, q_len, kv_len, head, v_head)


def _core_flops(batch: int, heads: int, q_len: int, kv_len: int, head: int, v_head: int) -> int:
    scores = batch * heads * q_len * kv_len
    return 2 * scores * (head + v_head) + SOFTMAX_COST * scores


def _loop_flops(node: ir.Node, sizes: Mapping[str, int]) -> int:
    body = node.attributes.get("body")
    if body is None or body.type != ir.AttributeType.GRAPH:
        return 0
    per_step = sum(node_flops(inner, sizes)[1] for inner in nodes(body.as_graph()))
    if node.op_type == "Scan":
        scans = node.attributes.get_int("num_scan_inputs", 1)
        first = _dims(node.inputs[len(node.inputs) - scans], sizes) if scans else None
        axes = node.attributes.get_ints("scan_input_axes", None)
        axis = axes[0] if axes else 0
        steps = first[axis] if first else SEQUENCE_SIZE
    else:
        trip = node.inputs[0].const_value if node.inputs and node.inputs[0] else None
        steps = int(trip.numpy().reshape(())) if trip is not None else SEQUENCE_SIZE
    return per_step * steps


@dataclass
class FlopCount:
    """FLOPs of a concrete model: by op class, per node, and what could not be counted."""

    by_class: dict[str, int] = field(default_factory=dict)
    by_node: dict[ir.Node, tuple[str, int]] = field(default_factory=dict)
    """Keyed by the *original* model's nodes (``ConcreteModel.origin``)."""
    uncounted: int = 0
    """Compute nodes (conv, matmul, attention, recurrent) whose shapes stayed unknown."""

    @property
    def total(self) -> int:
        return sum(self.by_class.values())


def count_flops(
    concrete: ConcreteModel, attention_nodes: frozenset[int] = frozenset()
) -> FlopCount:
    """Count every top-level node of ``concrete.model``.

    Args:
        concrete: the model at concrete shapes.
        attention_nodes: ids of nodes (of ``concrete.model``) that are part of a decomposed
            attention: their FLOPs count as ``attention``, not ``matmul``.
    """
    count = FlopCount()
    by_class: Counter[str] = Counter()
    sizes = concrete.dims.sizes
    for node in concrete.model.graph:
        op_class, flops = node_flops(node, sizes)
        if id(node) in attention_nodes:
            op_class = "attention"
        if flops == 0 and op_class in ("conv", "matmul", "attention", "recurrent"):
            count.uncounted += 1
        by_class[op_class] += flops
        original = concrete.origin.get(id(node))
        if original is not None:
            count.by_node[original] = (op_class, flops)
    count.by_class = {k: v for k, v in sorted(by_class.items()) if v}
    return count


def count_params(model: ir.Model) -> tuple[int, int, int]:
    """``(elements, bytes, elements held by Constant nodes)`` of weight tensors.

    Weights are floating-point tensors and 8/4-bit integer tensors (quantized weights); int32
    and int64 tensors (shapes, indices) and booleans are not parameters.
    """

    def is_weight(dtype: ir.DataType) -> bool:
        return dtype.is_floating_point() or dtype in (
            ir.DataType.INT8,
            ir.DataType.UINT8,
            ir.DataType.INT4,
            ir.DataType.UINT4,
        )

    count = size = in_nodes = 0
    seen: set[int] = set()
    for graph in [model.graph, *_subgraphs(model.graph)]:
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None and id(tensor) not in seen and is_weight(tensor.dtype):
                seen.add(id(tensor))
                count += tensor.size
                size += tensor.nbytes
    for node in nodes(model.graph):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        attr = node.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            tensor = attr.as_tensor()
            if is_weight(tensor.dtype):
                count += tensor.size
                size += tensor.nbytes
                in_nodes += tensor.size
    return count, size, in_nodes


def _subgraphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    for node in nodes(graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield attr.as_graph()
            elif attr.type == ir.AttributeType.GRAPHS:
                yield from attr.as_graphs()


def peak_activation_bytes(model: ir.Model) -> int:
    """Peak bytes of live intermediate tensors in graph order (inputs included, constants
    not), for a model whose shapes are concrete."""

    def nbytes(value: ir.Value) -> int:
        if value.dtype is None or value.const_value is not None:
            return 0
        try:
            itemsize = value.dtype.itemsize
        except (TypeError, ValueError):  # strings have no fixed width: count a pointer
            itemsize = 8
        return math.ceil(numel(value, {}) * itemsize)

    remaining: Counter[int] = Counter()
    for node in model.graph:
        for value in node.inputs:
            if value is not None:
                remaining[id(value)] += 1
    outputs = {id(v) for v in model.graph.outputs}
    live = sum(nbytes(v) for v in model.graph.inputs)
    peak = live
    for node in model.graph:
        live += sum(nbytes(v) for v in node.outputs)
        peak = max(peak, live)
        for value in node.inputs:
            if value is None or value.is_initializer() or value.const_value is not None:
                continue
            remaining[id(value)] -= 1
            if remaining[id(value)] == 0 and id(value) not in outputs:
                live -= nbytes(value)
        for value in node.outputs:
            if remaining[id(value)] == 0 and id(value) not in outputs:
                live -= nbytes(value)
    return peak

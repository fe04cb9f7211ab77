"""Model analysis: architecture labels with evidence, FLOPs, parameters, activation memory.

``analyze(model)`` never changes ``model``. It works on a copy whose symbolic input dimensions
are fixed (the batch dimension, named ``*batch*`` or else the one most often first in the
inputs: 1; every other one: 128; the profile lists what it assumed), with constants folded and
shapes inferred (onnxscript's constant folding with shape inference): every tensor then has a
concrete shape, FLOPs can be counted, and shape-only subgraphs (position ranges, causal masks)
become constants whose contents can be inspected.

Classification uses match-only onnxscript patterns and plain graph walks, never node or value
names:

=====================  ===========================================================================
evidence               how it is found
=====================  ===========================================================================
``attention``          pattern ``MatMul(Softmax(MatMul(q, k) [* s] [+ m ...]), v)``, or an
                       ``Attention`` / com.microsoft attention op
``cross_attention``    an attention whose query depends on a graph input its key does not
``causal_mask``        a constant lower-triangular mask, ``Trilu``, ``is_causal=1``, or a
                       comparison of two position ranges (``Range``-derived values)
``kv_cache``           a 4-D graph input concatenated along the sequence axis, or fed to an
                       attention op's past key/value inputs
``patch_embedding``    a ``Conv`` on a 4-D graph input with stride == kernel > 1
``layer_norm`` ...     onnxscript's LayerNorm / RMSNorm / rotary patterns, our GELU patterns,
                       or the fused ops
``conv_block``         ``act(Conv)`` / ``act(BatchNormalization(Conv))``
``recurrence``         LSTM / GRU / RNN, or a Loop / Scan carrying state through a MatMul / Gemm
``embedding_lookup``   ``Gather`` from a 2-D constant table with non-constant indices
``feature_interaction``  ``MatMul(x, Transpose(x))`` (pairwise dot products)
``nms``                ``NonMaxSuppression`` / ``RoiAlign`` (detector post-processing)
=====================  ===========================================================================

plus the share of FLOPs by op class (conv, matmul, attention, recurrent, ...). Each label's
confidence is a documented formula of that evidence (see ``_score_labels``); the profile keeps
all of it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer._constant_folding import FoldConstantsPass
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.fusion._layer_norm import LayerNormFusion
from onnxscript.rewriter.rules.fusion._rms_normalization import RmsNormFusion
from onnxscript.rewriter.rules.fusion._rotary_embedding import RotaryEmbedding23Fusion

from ai_vmm.passes.fusion.gelu import GeluErf, GeluTanh

BATCH_SIZE = 1
OTHER_DIM_SIZE = 128
_FOLD_LIMIT = 1 << 20

_CONV_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv"})
_MATMUL_OPS = frozenset(
    {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "FusedGemm"}
)
_ATTENTION_OPS = frozenset(
    {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention"}
)
_RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
_NORM_OPS = frozenset(
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
_POOL_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"})
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
# FLOPs per output element of element-wise and reduction-like ops (approximate).
_ELEMENTWISE_COST = {
    **{op: 1 for op in _SIMPLE_ELEMENTWISE},
    **{op: 4 for op in _TRANSCENDENTAL},
    **{op: 8 for op in ("Gelu", "FastGelu", "BiasGelu", "QuickGelu")},
    **{op: 5 for op in ("Softmax", "LogSoftmax")},
    **{op: 1 for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2")},
}
_DETECTOR_OPS = frozenset({"NonMaxSuppression", "RoiAlign", "BatchedNMS", "EfficientNMS_TRT"})
_LABEL_THRESHOLD = 0.3

logger = logging.getLogger(__name__)


class Label(NamedTuple):
    """An architecture label, how sure we are (0-1), and the evidence behind it."""

    label: str
    confidence: float
    evidence: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": self.confidence, "evidence": self.evidence}


@dataclass
class ModelProfile:
    """What ``analyze`` found. ``labels`` is sorted by confidence, the first is the primary.

    FLOPs, activation memory and shapes are evaluated at ``assumed_dims`` (see
    ``shape_note``); ``flops`` counts a multiply-add as 2.
    """

    labels: list[Label] = field(default_factory=list)
    flops: dict[str, int] = field(default_factory=dict)
    total_flops: int = 0
    params: int = 0
    param_bytes: int = 0
    params_in_constant_nodes: int = 0
    activation_bytes: int = 0
    op_histogram: dict[str, int] = field(default_factory=dict)
    dynamic_dims: dict[str, list[int | str | None]] = field(default_factory=dict)
    assumed_dims: dict[str, int] = field(default_factory=dict)
    patterns: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    opset: int = 0
    shape_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def primary_label(self) -> str | None:
        """The most confident label, or None when nothing passed the threshold."""
        return self.labels[0].label if self.labels else None

    @property
    def flop_share(self) -> dict[str, float]:
        """Each op class's fraction of ``total_flops``."""
        total = self.total_flops or 1
        return {k: round(v / total, 4) for k, v in self.flops.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": [label.to_json() for label in self.labels],
            "flops": {"total": self.total_flops, "by_class": dict(self.flops)},
            "flop_share": self.flop_share,
            "params": self.params,
            "param_bytes": self.param_bytes,
            "params_in_constant_nodes": self.params_in_constant_nodes,
            "activation_bytes": self.activation_bytes,
            "op_histogram": dict(self.op_histogram),
            "dynamic_dims": {k: list(v) for k, v in self.dynamic_dims.items()},
            "assumed_dims": dict(self.assumed_dims),
            "shape_note": self.shape_note,
            "patterns": dict(self.patterns),
            "nodes": self.nodes,
            "opset": self.opset,
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------------------------------
# Match-only patterns
# ------------------------------------------------------------------------------------------


class AttentionCore(pattern.PatternBase):
    """``MatMul(Softmax(MatMul(q, k) [*|/ s] [+ m] [+ m]), v)``, a NaN guard allowed."""

    def pattern(self, op: Any, q: Any, k: Any, v: Any) -> Any:
        scores = op.MatMul(q, k, _outputs=["scores"])
        scaled = pattern.OrValue(
            [op.Mul(scores, pattern.ANY_VALUE), op.Div(scores, pattern.ANY_VALUE), scores]
        )
        masked = pattern.OrValue(
            [
                op.Add(op.Add(scaled, pattern.ANY_VALUE), pattern.ANY_VALUE),
                op.Add(scaled, pattern.ANY_VALUE),
                scaled,
            ]
        )
        weights = op.Softmax(masked, _allow_other_attributes=True)
        guarded = pattern.OrValue(
            [op.Where(op.IsNaN(weights), pattern.ANY_VALUE, weights), weights]
        )
        return op.MatMul(guarded, v)


class ConvBlock(pattern.PatternBase):
    """An activation after a Conv, with or without a BatchNormalization between."""

    def __init__(self, activation: str) -> None:
        super().__init__(f"ConvBlock{activation}")
        self._activation = activation

    def pattern(self, op: Any, x: Any) -> Any:
        conv = op.Conv(x, _allow_other_inputs=True, _allow_other_attributes=True)
        normed = pattern.OrValue(
            [
                op.BatchNormalization(conv, _allow_other_inputs=True, _allow_other_attributes=True),
                conv,
            ]
        )
        if self._activation == "SiLU":
            return op.Mul(normed, op.Sigmoid(normed))
        return getattr(op, self._activation)(
            normed, _allow_other_inputs=True, _allow_other_attributes=True
        )


_CONV_BLOCKS: list[pattern.PatternBase] = [
    ConvBlock(activation) for activation in ("Relu", "Clip", "HardSwish", "LeakyRelu", "SiLU")
]


class FeatureInteraction(pattern.PatternBase):
    """``MatMul(x, Transpose(x))``: all pairwise dot products of a stack of feature vectors."""

    def pattern(self, op: Any, x: Any) -> Any:
        return op.MatMul(x, op.Transpose(x, _allow_other_attributes=True))


_PATTERNS: dict[str, list[pattern.PatternBase]] = {
    "attention": [AttentionCore()],
    "layer_norm": [LayerNormFusion()],
    "rms_norm": [RmsNormFusion("rms1", mul_order=True), RmsNormFusion("rms2", mul_order=False)],
    "rotary": [RotaryEmbedding23Fusion()],
    "gelu": [
        cls(f"{cls.__name__}_{order}", order, swap)
        for cls in (GeluErf, GeluTanh)
        for order in ("x_half_first", "half_bracket_first", "x_bracket_first")
        for swap in (False, True)
    ],
    "feature_interaction": [FeatureInteraction()],
}
# Ops of which every match of a pattern group contains at least one.
_PATTERN_ANCHORS: dict[str, frozenset[str]] = {
    "attention": frozenset({"Softmax"}),
    "layer_norm": frozenset({"ReduceMean"}),
    "rms_norm": frozenset({"ReduceMean"}),
    "rotary": frozenset({"Cos"}),
    "gelu": frozenset({"Erf", "Tanh"}),
    "feature_interaction": frozenset({"Transpose"}),
}
# Fused ops that count as the same evidence as a pattern.
_FUSED_EVIDENCE = {
    "attention": _ATTENTION_OPS,
    "layer_norm": frozenset({"LayerNormalization", "SkipLayerNormalization"}),
    "rms_norm": frozenset(
        {"RMSNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"}
    ),
    "rotary": frozenset({"RotaryEmbedding"}),
    "gelu": frozenset({"Gelu", "FastGelu", "BiasGelu"}),
}


def _nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    yield from ir.traversal.RecursiveGraphIterator(graph)


def _match_all(model: ir.Model, patterns: list[pattern.PatternBase]) -> list[Any]:
    matches = []
    for node in _nodes(model.graph):
        container = node.graph if node.graph is not None else model.graph
        for pat in patterns:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                match = pat.match(model, container, node, check_nodes_are_removable=False)
            if match:
                matches.append(match)
                break
    return matches


# ------------------------------------------------------------------------------------------
# The concrete copy
# ------------------------------------------------------------------------------------------


def _batch_dim_names(inputs: list[ir.Value]) -> set[str]:
    """Symbolic dims that stand for the batch: named ``*batch*``; else the name most often on
    the first axis of an input (ties: the earliest input's)."""
    named = [str(d) for v in inputs if v.shape is not None for d in v.shape if _named(d)]
    batch = {name for name in named if "batch" in name.lower()}
    if batch:
        return batch
    firsts = [
        str(v.shape[0])
        for v in inputs
        if v.shape is not None and len(v.shape) and _named(v.shape[0])
    ]
    if not firsts:
        return set()
    counts = Counter(firsts)
    return {max(firsts, key=lambda name: (counts[name], -firsts.index(name)))}


def _named(dim: Any) -> bool:
    return not isinstance(dim, int) and dim.value is not None


def _concrete_copy(model: ir.Model) -> tuple[ir.Model, dict[str, int], list[str]]:
    """A copy with fixed input dims, constants folded, shapes inferred; and what was assumed."""
    notes: list[str] = []
    copy = model.clone()
    batch_names = _batch_dim_names(list(copy.graph.inputs))
    assumed: dict[str, int] = {}
    for value in copy.graph.inputs:
        if value.shape is None:
            continue
        dims: list[int] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            name = str(dim) if dim.value is not None else f"{value.name}[{axis}]"
            first_unnamed = axis == 0 and dim.value is None
            size = BATCH_SIZE if name in batch_names or first_unnamed else OTHER_DIM_SIZE
            assumed[name] = size
            dims.append(size)
        value.shape = ir.Shape(dims)
    for node in _nodes(copy.graph):
        for output in node.outputs:
            if not output.is_graph_output():
                output.shape = None
    quiet = logging.getLogger("onnxscript")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            FoldConstantsPass(
                shape_inference=True,
                input_size_limit=_FOLD_LIMIT,
                output_size_limit=_FOLD_LIMIT,
            )(copy)
        common.RemoveUnusedNodesPass()(copy)
        common.TopologicalSortPass()(copy)
    except Exception as exc:  # folding is best effort: analyse what we have
        notes.append(f"constant folding failed: {' '.join(str(exc).split())[:150]}")
    finally:
        quiet.setLevel(level)
    return copy, assumed, notes


# ------------------------------------------------------------------------------------------
# FLOPs, parameters, memory
# ------------------------------------------------------------------------------------------


def _dims(value: ir.Value | None, sizes: dict[str, int]) -> list[int] | None:
    """The value's shape with named symbolic dims replaced from ``sizes``; None if unknown."""
    if value is None or value.shape is None:
        return None
    dims = [d if isinstance(d, int) else sizes.get(str(d), -1) for d in value.shape]
    return None if any(d < 0 for d in dims) else dims


def _numel(value: ir.Value | None, sizes: dict[str, int]) -> int:
    dims = _dims(value, sizes)
    return math.prod(dims) if dims is not None else 0


def _node_flops(node: ir.Node, sizes: dict[str, int]) -> tuple[str, int]:
    """``(op class, FLOPs)`` of one node (0 FLOPs where shapes are unknown).

    ``sizes`` gives the assumed size of each named symbolic dimension (subgraphs keep theirs).
    """
    op = node.op_type
    out = _dims(node.outputs[0], sizes) if node.outputs else None
    inputs = [_dims(v, sizes) for v in node.inputs]
    if op in _CONV_OPS:
        w = inputs[1] if len(inputs) > 1 else None
        if w is None or out is None:
            return "conv", 0
        if op == "ConvTranspose":
            x = inputs[0]
            return "conv", 2 * math.prod(x or [0]) * math.prod(w[1:])
        return "conv", 2 * math.prod(out) * math.prod(w[1:])
    if op in _MATMUL_OPS:
        a = inputs[0]
        if a is None or out is None:
            return "matmul", 0
        trans_a = node.attributes.get_int("transA", 0)
        k = a[-2] if trans_a and len(a) >= 2 else a[-1]
        return "matmul", 2 * math.prod(out) * k
    if op in _ATTENTION_OPS:
        return "attention", _attention_flops(node, inputs)
    if op in _RECURRENT_OPS:
        x, w, r = [*inputs, None, None, None][:3]
        if x is None or w is None or r is None:
            return "recurrent", 0
        steps, batch = (x[1], x[0]) if node.attributes.get_int("layout", 0) else (x[0], x[1])
        return "recurrent", 2 * w[0] * steps * batch * w[1] * (w[2] + r[2])
    if op in ("Loop", "Scan"):
        return "recurrent", _loop_flops(node, sizes)
    if op in _NORM_OPS:
        return "normalization", 5 * _numel(node.outputs[0], sizes)
    if op in _POOL_OPS:
        return "pooling", _numel(node.inputs[0], sizes) if node.inputs else 0
    if op in _ELEMENTWISE_COST:
        return "elementwise", _ELEMENTWISE_COST[op] * _numel(node.outputs[0], sizes)
    return "other", 0


node_flops = _node_flops
"""Public name of ``_node_flops``: the cost model (``ai_vmm.cost``) uses the same count."""


def _attention_flops(node: ir.Node, inputs: list[list[int] | None]) -> int:
    q, k, v = [*inputs, None, None, None][:3]
    if q is None or k is None or v is None:
        return 0
    if len(q) == 4:
        batch, heads, q_len, head = q
        kv_len, v_head = k[2], v[3]
    else:  # 3-D [B, S, H*D]: the head count is an attribute
        heads = node.attributes.get_int("q_num_heads", node.attributes.get_int("num_heads", 1))
        kv_heads = node.attributes.get_int("kv_num_heads", heads)
        batch, q_len, head = q[0], q[1], q[2] // max(heads, 1)
        kv_len, v_head = k[1], v[2] // max(kv_heads, 1)
    past = inputs[4] if len(inputs) > 4 else None
    if past is not None:
        kv_len += past[-2]
    return 2 * batch * heads * q_len * kv_len * (head + v_head) + 5 * batch * heads * q_len * kv_len


def _loop_flops(node: ir.Node, sizes: dict[str, int]) -> int:
    body = node.attributes.get("body")
    if body is None or body.type != ir.AttributeType.GRAPH:
        return 0
    per_step = sum(_node_flops(inner, sizes)[1] for inner in _nodes(body.as_graph()))
    if node.op_type == "Scan":
        scans = node.attributes.get_int("num_scan_inputs", 1)
        first = _dims(node.inputs[len(node.inputs) - scans], sizes) if scans else None
        axes = node.attributes.get_ints("scan_input_axes", None)
        axis = axes[0] if axes else 0
        steps = first[axis] if first else OTHER_DIM_SIZE
    else:
        trip = node.inputs[0].const_value if node.inputs and node.inputs[0] else None
        steps = int(trip.numpy().reshape(())) if trip is not None else OTHER_DIM_SIZE
    return per_step * steps


def _count_params(model: ir.Model) -> tuple[int, int, int]:
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
    for node in _nodes(model.graph):
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
    for node in _nodes(graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield attr.as_graph()
            elif attr.type == ir.AttributeType.GRAPHS:
                yield from attr.as_graphs()


def _peak_activation_bytes(model: ir.Model) -> int:
    """Peak bytes of live intermediate tensors in graph order (inputs included, constants
    not)."""

    def nbytes(value: ir.Value) -> int:
        if value.dtype is None or value.const_value is not None:
            return 0
        try:
            itemsize = value.dtype.itemsize
        except (TypeError, ValueError):  # strings have no fixed width: count a pointer
            itemsize = 8
        return math.ceil(_numel(value, {}) * itemsize)

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


# ------------------------------------------------------------------------------------------
# Evidence
# ------------------------------------------------------------------------------------------


def _is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and not value.is_graph_input()


def _input_ancestry(model: ir.Model) -> dict[int, int]:
    """For each value (by id), a bit mask of the graph inputs it depends on."""
    bits = {id(v): 1 << i for i, v in enumerate(model.graph.inputs)}
    for node in model.graph:
        mask = 0
        for value in node.inputs:
            if value is not None:
                mask |= bits.get(id(value), 0)
        for value in node.outputs:
            bits[id(value)] = mask
    return bits


def _range_derived(model: ir.Model) -> set[int]:
    """Values computed (directly or not) from a ``Range``: position arithmetic."""
    derived: set[int] = set()
    for node in model.graph:
        if node.op_type == "Range" or any(v is not None and id(v) in derived for v in node.inputs):
            derived.update(id(v) for v in node.outputs)
    return derived


def _is_causal_mask(tensor: np.ndarray) -> bool:
    """A mask whose last two axes ``[M, N]`` (N >= M >= 2) allow key j for query i iff
    ``j <= i + N - M``: boolean/0-1 (allowed = true/1) or additive (0 / <= -1e3)."""
    if tensor.ndim < 2 or tensor.size > _FOLD_LIMIT:
        return False
    rows, cols = tensor.shape[-2:]
    if rows < 2 or cols < rows:
        return False
    plane = tensor.reshape(-1, rows, cols)[0]
    if plane.dtype == np.bool_:
        allowed = plane
    elif np.issubdtype(plane.dtype, np.integer):
        if not np.isin(plane, (0, 1)).all():
            return False
        allowed = plane == 1
    elif np.issubdtype(plane.dtype, np.floating):
        if not np.all((plane == 0) | (plane <= -1e3)):
            return False
        allowed = plane == 0
    else:
        return False
    expected = np.tril(np.ones((rows, cols), dtype=bool), k=cols - rows)
    return bool(np.array_equal(allowed, expected))


def _constant_values(model: ir.Model) -> Iterator[ir.Value]:
    yield from model.graph.initializers.values()
    for node in model.graph:
        for value in node.outputs:
            if value.const_value is not None:
                yield value


@dataclass
class _Evidence:
    patterns: Counter[str] = field(default_factory=Counter)
    attention_matmuls: set[int] = field(default_factory=set)
    facts: dict[str, Any] = field(default_factory=dict)


def _collect_evidence(copy: ir.Model) -> _Evidence:
    ev = _Evidence()
    histogram = Counter(node.op_type for node in _nodes(copy.graph))
    ancestry = _input_ancestry(copy)
    attention_pairs: list[tuple[ir.Value, ir.Value]] = []
    for name, patterns in _PATTERNS.items():
        if not _PATTERN_ANCHORS[name] & histogram.keys():
            continue  # none of the ops every match contains: skip the search
        matches = _match_all(copy, patterns)
        ev.patterns[name] += len(matches)
        if name == "attention":
            for match in matches:
                scores = match.bindings["scores"]
                attention_pairs.append((match.bindings["q"], match.bindings["k"]))
                ev.attention_matmuls.add(id(scores.producer()))
                ev.attention_matmuls.update(id(n) for n in match.nodes if n.op_type == "MatMul")
    for name, ops in _FUSED_EVIDENCE.items():
        ev.patterns[name] += sum(histogram[op] for op in ops)
    fused_attention = [n for n in _nodes(copy.graph) if n.op_type in _ATTENTION_OPS]
    attention_pairs += [
        (n.inputs[0], n.inputs[1])
        for n in fused_attention
        if len(n.inputs) > 1 and n.inputs[0] is not None and n.inputs[1] is not None
    ]

    ev.patterns["cross_attention"] = sum(
        1
        for q, k in attention_pairs
        if q is not None and k is not None and ancestry.get(id(q), 0) & ~ancestry.get(id(k), 0)
    )
    derived = _range_derived(copy)
    comparisons = sum(
        1
        for node in copy.graph
        if node.op_type in ("Less", "LessOrEqual", "Greater", "GreaterOrEqual")
        and all(v is not None and not _is_constant(v) and id(v) in derived for v in node.inputs)
    )
    triangular = sum(
        1
        for value in _constant_values(copy)
        if value.const_value is not None and _is_causal_mask(value.const_value.numpy())
    )
    flagged = sum(1 for n in fused_attention if n.attributes.get_int("is_causal", 0))
    ev.patterns["causal_mask"] = comparisons + triangular + histogram["Trilu"] + flagged
    ev.patterns["kv_cache"] = _kv_cache_inputs(copy, fused_attention)
    ev.patterns["conv_block"] = len(_match_all(copy, _CONV_BLOCKS)) if histogram["Conv"] else 0
    ev.patterns["patch_embedding"] = sum(1 for node in copy.graph if _is_patch_embedding(node))
    tables = {
        id(table)
        for node in copy.graph
        if node.op_type == "Gather"
        and (table := node.inputs[0]) is not None
        and _is_constant(table)
        and len(table.shape or ()) == 2
        and not _is_constant(node.inputs[1])
    }
    ev.patterns["embedding_lookup"] = len(tables)
    ev.patterns["recurrence"] = sum(histogram[op] for op in _RECURRENT_OPS) + sum(
        1 for node in _nodes(copy.graph) if _is_recurrent_loop(node)
    )
    ev.patterns["nms"] = sum(histogram[op] for op in _DETECTOR_OPS)
    ev.patterns["conv"] = sum(histogram[op] for op in _CONV_OPS)
    typed = [(v, v.dtype) for v in copy.graph.inputs if v.dtype is not None]
    ev.facts["image_input"] = any(
        dtype.is_floating_point() and v.shape is not None and len(v.shape) == 4
        for v, dtype in typed
    )
    ev.facts["token_input"] = any(
        not dtype.is_floating_point() and any(use.op_type == "Gather" for use, _ in v.uses())
        for v, dtype in typed
    )
    return ev


def _kv_cache_inputs(model: ir.Model, fused_attention: list[ir.Node]) -> int:
    """Graph inputs that are past keys/values: concatenated along the sequence axis of a 4-D
    tensor, or fed to an attention op's past key/value inputs."""
    found: set[int] = set()
    for node in model.graph:
        if node.op_type == "Concat" and node.attributes.get_int("axis", 0) in (2, -2):
            found.update(
                id(v)
                for v in node.inputs
                if v is not None and v.is_graph_input() and len(v.shape or ()) == 4
            )
    for node in fused_attention:
        past = node.inputs[4:6] if node.op_type == "Attention" else node.inputs[3:5]
        found.update(id(v) for v in past if v is not None and v.is_graph_input())
    return len(found)


def _is_patch_embedding(node: ir.Node) -> bool:
    if node.op_type != "Conv" or len(node.inputs) < 2:
        return False
    image, weight = node.inputs[0], node.inputs[1]
    if image is None or not image.is_graph_input() or weight is None or weight.shape is None:
        return False
    if image.shape is None or len(image.shape) != 4:
        return False
    kernel = node.attributes.get_ints("kernel_shape", None) or [
        d for d in list(weight.shape)[2:] if isinstance(d, int)
    ]
    strides = node.attributes.get_ints("strides", None) or [1] * len(kernel)
    return bool(kernel) and list(kernel) == list(strides) and min(kernel) > 1


def _is_recurrent_loop(node: ir.Node) -> bool:
    """A Loop/Scan that carries state from one iteration to the next through a MatMul/Gemm."""
    if node.op_type not in ("Loop", "Scan"):
        return False
    body = node.attributes.get("body")
    if body is None or body.type != ir.AttributeType.GRAPH:
        return False
    if node.op_type == "Scan":
        carried = len(node.inputs) - node.attributes.get_int("num_scan_inputs", 0)
    else:
        carried = len(node.inputs) - 2
    ops = {inner.op_type for inner in _nodes(body.as_graph())}
    return carried > 0 and bool(ops & (_MATMUL_OPS | _RECURRENT_OPS))


# ------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------


def _score_labels(ev: _Evidence, share: dict[str, float]) -> list[Label]:
    """Candidate labels from the evidence; confidence formulas, all clipped to [0, 0.99]:

    * attention present (``a`` = attention cores + attention ops):
      cross-attention -> encoder-decoder 0.9; else causal mask or KV cache -> causal-decoder
      0.75 (+0.1 causal mask, +0.1 KV cache); else patch embedding or image input ->
      vision-transformer 0.7 (+0.15 patch embedding, +0.1 image input); else
      transformer-encoder 0.7 (+0.1 token input, +0.1 layer/RMS norm).
    * recurrence with convolutions doing >= 10% of the FLOPs -> cnn-rnn 0.85 (and cnn, rnn at
      0.5 as components); recurrence alone -> rnn 0.6 + 0.35 * recurrent FLOP share.
    * NMS or RoiAlign -> detector 0.95.
    * convolutions, no attention, no recurrence -> cnn 0.5 + 0.45 * conv FLOP share
      (+0.05 with conv blocks); 0.6 in a detector (its backbone).
    * embedding tables (>= 2, or 1 with a feature interaction), no attention/recurrence ->
      recommender 0.6 (+0.15 interaction, +0.15 >= 2 tables).
    * only MatMul/Gemm doing >= 50% of FLOPs, nothing of the above -> mlp 0.5 + 0.4 * matmul
      share (0.4 when embedding tables are present).
    """
    p = ev.patterns
    facts = ev.facts
    labels: list[Label] = []

    def add(label: str, confidence: float, keys: tuple[str, ...], **extra: Any) -> None:
        evidence: dict[str, Any] = {"patterns": {k: p[k] for k in keys if p[k]}}
        evidence["flop_share"] = {k: v for k, v in share.items() if v >= 0.01}
        evidence.update(extra)
        labels.append(Label(label, round(min(confidence, 0.99), 3), evidence))

    attention = p["attention"]
    conv_share, rec_share = share.get("conv", 0.0), share.get("recurrent", 0.0)
    norm_keys = ("layer_norm", "rms_norm", "gelu", "rotary")
    if attention:
        if p["cross_attention"]:
            add("encoder-decoder", 0.9, ("attention", "cross_attention", "causal_mask", *norm_keys))
        elif p["causal_mask"] or p["kv_cache"]:
            add(
                "causal-decoder",
                0.75 + 0.1 * bool(p["causal_mask"]) + 0.1 * bool(p["kv_cache"]),
                ("attention", "causal_mask", "kv_cache", *norm_keys),
                kv_cache=bool(p["kv_cache"]),
            )
        elif p["patch_embedding"] or facts["image_input"]:
            add(
                "vision-transformer",
                0.7 + 0.15 * bool(p["patch_embedding"]) + 0.1 * facts["image_input"],
                ("attention", "patch_embedding", *norm_keys),
                image_input=facts["image_input"],
            )
        else:
            add(
                "transformer-encoder",
                0.7 + 0.1 * facts["token_input"] + 0.1 * bool(p["layer_norm"] or p["rms_norm"]),
                ("attention", *norm_keys),
                token_input=facts["token_input"],
            )
    if p["recurrence"]:
        if p["conv"] and conv_share >= 0.1:
            add("cnn-rnn", 0.85, ("recurrence", "conv", "conv_block"))
            add("cnn", 0.5, ("conv", "conv_block"))
            add("rnn", 0.5, ("recurrence",))
        elif not attention:
            add("rnn", 0.6 + 0.35 * rec_share, ("recurrence",))
    if p["nms"]:
        add("detector", 0.95, ("nms", "conv"))
    if p["conv"] and not attention and not p["recurrence"]:
        # A detector's CNN is its backbone: a component, like the parts of a hybrid.
        cnn = 0.5 + 0.45 * conv_share + 0.05 * bool(p["conv_block"])
        add("cnn", 0.6 if p["nms"] else cnn, ("conv", "conv_block"))
    plain = not attention and not p["recurrence"] and not p["conv"]
    tables = p["embedding_lookup"]
    if plain and (tables >= 2 or (tables and p["feature_interaction"])):
        add(
            "recommender",
            0.6 + 0.15 * bool(p["feature_interaction"]) + 0.15 * (tables >= 2),
            ("embedding_lookup", "feature_interaction"),
        )
    matmul_share = share.get("matmul", 0.0)
    if plain and matmul_share >= 0.5:
        add("mlp", 0.4 if tables else 0.5 + 0.4 * matmul_share, ("embedding_lookup",))
    labels = [label for label in labels if label.confidence >= _LABEL_THRESHOLD]
    return sorted(labels, key=lambda label: -label.confidence)


# ------------------------------------------------------------------------------------------
# The entry points
# ------------------------------------------------------------------------------------------


def analyze(model: ir.Model) -> ModelProfile:
    """Profile ``model`` (unchanged): labels with evidence, FLOPs, parameters, memory.

    Args:
        model: the model; best canonicalized first (constants lifted, shapes inferred), but any
            valid model works.

    Returns:
        The profile. FLOPs and activation memory are evaluated with symbolic dimensions set to
        ``BATCH_SIZE`` (batch axes: named ``*batch*``, else the name most often first) and
        ``OTHER_DIM_SIZE`` (all others).
    """
    copy, assumed, notes = _concrete_copy(model)
    evidence = _collect_evidence(copy)
    flops: Counter[str] = Counter()
    unknown = 0
    for node in copy.graph:
        op_class, count = _node_flops(node, assumed)
        if id(node) in evidence.attention_matmuls:
            op_class = "attention"
        if count == 0 and op_class in ("conv", "matmul", "attention", "recurrent"):
            unknown += 1
        flops[op_class] += count
    if unknown:
        notes.append(f"{unknown} compute nodes have unknown shapes: their FLOPs count as 0")
    params, param_bytes, in_nodes = _count_params(model)
    profile = ModelProfile(
        flops={k: v for k, v in sorted(flops.items()) if v},
        total_flops=sum(flops.values()),
        params=params,
        param_bytes=param_bytes,
        params_in_constant_nodes=in_nodes,
        activation_bytes=_peak_activation_bytes(copy),
        op_histogram=dict(
            sorted(
                Counter(
                    f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                    for n in _nodes(model.graph)
                ).items(),
                key=lambda item: (-item[1], item[0]),
            )
        ),
        dynamic_dims={
            v.name or f"input{i}": [
                d if isinstance(d, int) else (str(d) if d.value is not None else None)
                for d in v.shape
            ]
            for i, v in enumerate(model.graph.inputs)
            if v.shape is not None and not v.shape.is_static()
        },
        assumed_dims=assumed,
        patterns={k: v for k, v in sorted(evidence.patterns.items()) if v},
        nodes=sum(1 for _ in _nodes(model.graph)),
        opset=int(model.opset_imports.get("", 0) or 0),
        shape_note=(
            f"symbolic dims at batch={BATCH_SIZE} (the batch dim: named *batch*, else the one "
            f"most often first in the inputs) and {OTHER_DIM_SIZE} (all others)"
        ),
        notes=notes,
    )
    profile.labels = _score_labels(evidence, profile.flop_share)
    return profile


def _human(count: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {suffix}{unit}"
    return f"{count:.0f} {unit}".rstrip()


def format_profile(profile: ModelProfile, *, top_ops: int = 12) -> str:
    """The profile as text for ``vmmc inspect``."""
    lines = []
    if profile.labels:
        lines.append("architecture:")
        for label in profile.labels:
            patterns = ", ".join(f"{k}={v}" for k, v in label.evidence["patterns"].items())
            lines.append(f"  {label.label:20} {label.confidence:.2f}  {patterns}")
    else:
        lines.append("architecture: unknown (no label passed the threshold)")
    lines.append(f"FLOPs:      {_human(profile.total_flops, 'FLOP')} ({profile.shape_note})")
    for op_class, share in sorted(profile.flop_share.items(), key=lambda item: -item[1]):
        lines.append(f"  {op_class:14} {share * 100:5.1f}%  {_human(profile.flops[op_class])}")
    lines.append(
        f"parameters: {_human(profile.params)} ({_human(profile.param_bytes, 'B')}"
        + (
            f", {_human(profile.params_in_constant_nodes)} in Constant nodes)"
            if profile.params_in_constant_nodes
            else ")"
        )
    )
    lines.append(f"activations (peak estimate): {_human(profile.activation_bytes, 'B')}")
    if profile.dynamic_dims:
        dims = "; ".join(f"{k} {v}" for k, v in profile.dynamic_dims.items())
        lines.append(f"dynamic inputs: {dims}")
    lines.append(f"nodes: {profile.nodes} (opset {profile.opset})")
    ops = list(profile.op_histogram.items())
    shown = ", ".join(f"{op} {n}" for op, n in ops[:top_ops])
    more = f", ... ({len(ops) - top_ops} more)" if len(ops) > top_ops else ""
    lines.append(f"ops: {shown}{more}")
    if profile.patterns:
        lines.append("patterns: " + ", ".join(f"{k}={v}" for k, v in profile.patterns.items()))
    lines.extend(f"note: {note}" for note in profile.notes)
    return "\n".join(lines)

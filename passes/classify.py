"""Architecture labels with evidence, from match-only patterns and plain graph walks.

Classification never reads node or value names. It runs on a concrete copy of the model
(``concrete_shapes.concrete_copy``), where shape-only subgraphs (position ranges, causal masks)
are constants whose contents can be inspected:

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
confidence is a documented formula of that evidence (see ``score_labels``).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.fusion._layer_norm import LayerNormFusion
from onnxscript.rewriter.rules.fusion._rms_normalization import RmsNormFusion
from onnxscript.rewriter.rules.fusion._rotary_embedding import RotaryEmbedding23Fusion

from ai_vmm.passes.concrete_shapes import FOLD_LIMIT, nodes
from ai_vmm.passes.flops import ATTENTION_OPS, CONV_OPS, MATMUL_OPS, RECURRENT_OPS
from ai_vmm.passes.fusion.gelu import GeluErf, GeluTanh

DETECTOR_OPS = frozenset({"NonMaxSuppression", "RoiAlign", "BatchedNMS", "EfficientNMS_TRT"})
LABEL_THRESHOLD = 0.3


class Label(NamedTuple):
    """An architecture label, how sure we are (0-1), and the evidence behind it."""

    label: str
    confidence: float
    evidence: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": self.confidence, "evidence": self.evidence}


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
    "attention": ATTENTION_OPS,
    "layer_norm": frozenset({"LayerNormalization", "SkipLayerNormalization"}),
    "rms_norm": frozenset(
        {"RMSNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"}
    ),
    "rotary": frozenset({"RotaryEmbedding"}),
    "gelu": frozenset({"Gelu", "FastGelu", "BiasGelu"}),
}


def _match_all(model: ir.Model, patterns: list[pattern.PatternBase]) -> list[Any]:
    matches = []
    for node in nodes(model.graph):
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
    if tensor.ndim < 2 or tensor.size > FOLD_LIMIT:
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
class Evidence:
    """What the graph shows: pattern counts, the MatMuls inside attention, input facts."""

    patterns: Counter[str] = field(default_factory=Counter)
    attention_matmuls: set[int] = field(default_factory=set)
    facts: dict[str, Any] = field(default_factory=dict)


def collect_evidence(copy: ir.Model) -> Evidence:
    """The evidence in ``copy`` (a concrete copy: see the module docstring)."""
    ev = Evidence()
    histogram = Counter(node.op_type for node in nodes(copy.graph))
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
    fused_attention = [n for n in nodes(copy.graph) if n.op_type in ATTENTION_OPS]
    attention_pairs += [pair for n in fused_attention if (pair := _query_key(n)) is not None]

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
    ev.patterns["recurrence"] = sum(histogram[op] for op in RECURRENT_OPS) + sum(
        1 for node in nodes(copy.graph) if _is_recurrent_loop(node)
    )
    ev.patterns["nms"] = sum(histogram[op] for op in DETECTOR_OPS)
    ev.patterns["conv"] = sum(histogram[op] for op in CONV_OPS)
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


def _query_key(node: ir.Node) -> tuple[ir.Value, ir.Value] | None:
    """The query and key of an attention op. com.microsoft ``Attention`` projects one input
    (its second input is the weight) and a packed QKV has no key: both are self-attention."""
    query = node.inputs[0] if node.inputs else None
    if query is None:
        return None
    if node.domain == "com.microsoft" and node.op_type in ("Attention", "PackedAttention"):
        return query, query
    key = node.inputs[1] if len(node.inputs) > 1 else None
    return query, key if key is not None else query


# (contrib domain, op) -> the slice of its inputs that holds past keys/values.
_PAST_INPUTS = {
    (False, "Attention"): (4, 6),
    (True, "Attention"): (4, 5),
    (True, "MultiHeadAttention"): (6, 8),
    (True, "GroupQueryAttention"): (3, 5),
}


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
        start, stop = _PAST_INPUTS.get((node.domain == "com.microsoft", node.op_type), (0, 0))
        past = node.inputs[start:stop]
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
    ops = {inner.op_type for inner in nodes(body.as_graph())}
    return carried > 0 and bool(ops & (MATMUL_OPS | RECURRENT_OPS))


# ------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------


def score_labels(ev: Evidence, share: dict[str, float]) -> list[Label]:
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
    labels = [label for label in labels if label.confidence >= LABEL_THRESHOLD]
    return sorted(labels, key=lambda label: -label.confidence)

"""FLOP counting: every formula of ``ai_vmm.passes.flops`` on a tiny graph, against numbers
computed by hand; fused and decomposed attention agree; shapes reach past folded masks and
com.microsoft ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
from onnx import numpy_helper

from ai_vmm.passes.analyze import analyze
from ai_vmm.passes.concrete_shapes import concrete_copy
from ai_vmm.passes.flops import SOFTMAX_COST, count_flops

FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def _weight(name: str, *shape: int, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype), name)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[str],
    inits: list[onnx.TensorProto] = (),  # type: ignore[assignment]
    *,
    opset: int = 23,
) -> ir.Model:
    graph = oh.make_graph(
        nodes, "g", inputs, [oh.make_tensor_value_info(o, FLOAT, None) for o in outputs]
    )
    graph.initializer.extend(inits)
    opsets = [oh.make_opsetid("", opset), oh.make_opsetid("com.microsoft", 1)]
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=opsets))


def _flops(model: ir.Model, dims: dict[str, int] | None = None) -> dict[str, int]:
    return count_flops(concrete_copy(model, dims)).by_class


def _core(b: int, n: int, s: int, length: int, d: int, dv: int) -> int:
    """QK^T and PV (a multiply-add is 2 FLOPs) and the softmax, by hand."""
    return 2 * b * n * s * length * d + 2 * b * n * s * length * dv + 5 * b * n * s * length


def _x(name: str, *dims: int | str, dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, list(dims))


def test_opset23_attention_3d_matches_the_decomposed_count() -> None:
    b, s, heads, head = 2, 16, 2, 4
    fused = _model(
        [oh.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=heads, kv_num_heads=heads)],
        [_x(t, "batch", "seq", heads * head) for t in "qkv"],
        ["y"],
    )
    counted = _flops(fused, {"batch": b, "seq": s})
    assert counted == {"attention": _core(b, heads, s, s, head, head)}

    # The same attention written out: MatMul(Softmax(MatMul(q, k^T) / sqrt d), v) per head.
    split = numpy_helper.from_array(np.array([0, 0, heads, head], np.int64), "split")
    nodes = []
    for t in "qkv":
        nodes += [
            oh.make_node("Reshape", [t, "split"], [f"{t}4"]),
            oh.make_node("Transpose", [f"{t}4"], [f"{t}h"], perm=[0, 2, 1, 3]),
        ]
    nodes += [
        oh.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", ["qh", "kt"], ["scores"]),
        oh.make_node("Div", ["scores", "scale"], ["scaled"]),
        oh.make_node("Softmax", ["scaled"], ["p"], axis=-1),
        oh.make_node("MatMul", ["p", "vh"], ["y"]),
    ]
    scale = numpy_helper.from_array(np.array(2.0, np.float32), "scale")
    decomposed = _model(
        nodes, [_x(t, "batch", "seq", heads * head) for t in "qkv"], ["y"], [split, scale]
    )
    profile = analyze(decomposed, {"batch": b, "seq": s})
    softmax = SOFTMAX_COST * b * heads * s * s
    assert profile.flops["attention"] + softmax == counted["attention"]
    assert profile.patterns["attention"] == 1


def test_opset23_attention_4d_with_past_and_grouped_heads() -> None:
    b, heads, kv_heads, s, past, head = 1, 4, 2, 8, 24, 16
    model = _model(
        [oh.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "pk2", "pv2"])],
        [
            _x("q", "batch", heads, "seq", head),
            _x("k", "batch", kv_heads, "seq", head),
            _x("v", "batch", kv_heads, "seq", head),
            _x("pk", "batch", kv_heads, "past", head),
            _x("pv", "batch", kv_heads, "past", head),
        ],
        ["y"],
    )
    flops = _flops(model, {"batch": b, "seq": s, "past": past})
    assert flops == {"attention": _core(b, heads, s, past + s, head, head)}
    assert analyze(model).patterns["kv_cache"] == 2


def test_contrib_multi_head_attention_reads_its_past_at_index_6() -> None:
    b, heads, s, past, head = 2, 3, 5, 7, 4
    node = oh.make_node(
        "MultiHeadAttention",
        ["q", "k", "v", "", "", "", "pk", "pv"],
        ["y", "pk2", "pv2"],
        domain="com.microsoft",
        num_heads=heads,
    )
    model = _model(
        [node, oh.make_node("MatMul", ["y", "w"], ["z"])],
        [
            *(_x(t, "batch", "seq", heads * head) for t in "qkv"),
            _x("pk", "batch", heads, "past", head),
            _x("pv", "batch", heads, "past", head),
        ],
        ["z"],
        [_weight("w", heads * head, 6)],
    )
    flops = _flops(model, {"batch": b, "seq": s, "past": past})
    # The MatMul after the contrib op is counted: its output shape was propagated.
    assert flops == {
        "attention": _core(b, heads, s, past + s, head, head),
        "matmul": 2 * b * s * 6 * heads * head,
    }


def test_contrib_attention_counts_its_qkv_projection() -> None:
    b, s, hidden, heads = 1, 32, 12, 3
    node = oh.make_node(
        "Attention", ["x", "w", "bias"], ["y"], domain="com.microsoft", num_heads=heads
    )
    model = _model(
        [node, oh.make_node("MatMul", ["y", "wo"], ["z"])],
        [_x("x", "batch", "seq", hidden)],
        ["z"],
        [_weight("w", hidden, 3 * hidden), _weight("bias", 3 * hidden), _weight("wo", hidden, 5)],
    )
    flops = _flops(model, {"batch": b, "seq": s})
    projection = 2 * b * s * hidden * 3 * hidden
    head = hidden // heads
    assert flops["attention"] == projection + _core(b, heads, s, s, head, head)
    assert flops["matmul"] == 2 * b * s * hidden * 5
    profile = analyze(model)
    # The weight is the op's second input, not a key from elsewhere: self-attention.
    assert profile.patterns.get("cross_attention", 0) == 0
    assert profile.primary_label == "transformer-encoder"


def test_contrib_group_query_attention_packed_qkv() -> None:
    b, s, heads, kv_heads, head = 1, 10, 4, 2, 8
    node = oh.make_node(
        "GroupQueryAttention",
        ["qkv", "", "", "pk", "pv", "seqlens", "total"],
        ["y", "pk2", "pv2"],
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv_heads,
    )
    model = _model(
        [node, oh.make_node("MatMul", ["y", "wo"], ["z"])],
        [
            _x("qkv", "batch", "seq", (heads + 2 * kv_heads) * head),
            _x("pk", "batch", kv_heads, "past", head),
            _x("pv", "batch", kv_heads, "past", head),
            _x("seqlens", "batch", dtype=onnx.TensorProto.INT32),
            _x("total", dtype=onnx.TensorProto.INT32),
        ],
        ["z"],
        [_weight("wo", heads * head, heads * head)],
    )
    flops = _flops(model, {"batch": b, "seq": s, "past": 6})
    assert flops["attention"] == _core(b, heads, s, 6 + s, head, head)
    assert flops["matmul"] == 2 * b * s * (heads * head) ** 2


def test_einsum_contraction_and_transpose() -> None:
    b, h, q, k, d = 2, 3, 5, 7, 4
    model = _model(
        [
            oh.make_node("Einsum", ["a", "c"], ["s"], equation="bhqd,bhkd->bhqk"),
            oh.make_node("Einsum", ["s"], ["t"], equation="...qk->...kq"),
        ],
        [_x("a", b, h, q, d), _x("c", b, h, k, d)],
        ["t"],
    )
    assert _flops(model) == {"matmul": 2 * b * h * q * k * d + b * h * q * k}


def test_convolutions_gemm_and_quantized_conv() -> None:
    x_scale = numpy_helper.from_array(np.array(0.1, np.float32), "xs")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "xz")
    w_scale = numpy_helper.from_array(np.array([0.1] * 8, np.float32), "ws")
    w_zero = numpy_helper.from_array(np.array([0] * 8, np.uint8), "wz")
    nodes = [
        # Grouped conv: 8 outputs from 4 channels in 2 groups, 3x3, same padding.
        oh.make_node("Conv", ["x", "w"], ["c"], group=2, pads=[1, 1, 1, 1]),
        # Transposed conv: every input element meets C_out x 2 x 2 weights.
        oh.make_node("ConvTranspose", ["c", "wt"], ["u"], strides=[2, 2]),
        oh.make_node("Gemm", ["a", "b"], ["g"], transA=1),
        oh.make_node(
            "QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "xs", "xz"], ["cq"], pads=[0] * 4
        ),
    ]
    model = _model(
        nodes,
        [
            _x("x", 1, 4, 6, 6),
            _x("a", 5, 3),
            _x("xq", 1, 4, 6, 6, dtype=onnx.TensorProto.UINT8),
        ],
        ["u", "g", "cq"],
        [
            _weight("w", 8, 2, 3, 3),
            _weight("wt", 8, 3, 2, 2),
            _weight("b", 5, 7),
            _weight("wq", 8, 4, 1, 1, dtype=np.uint8),
            x_scale,
            zero,
            w_scale,
            w_zero,
        ],
        opset=21,
    )
    conv = 2 * (8 * 6 * 6) * 2 * 3 * 3
    transposed = 2 * (8 * 6 * 6) * 3 * 2 * 2
    quantized = 2 * (8 * 6 * 6) * 4
    assert _flops(model) == {"conv": conv + transposed + quantized, "matmul": 2 * 3 * 7 * 5}


def test_expand_to_a_folded_constant_of_shape_keeps_shapes_known() -> None:
    """The BERT-export bug: ``Expand(x, ConstantOfShape(...))``'s shape hangs on a constant
    onnxscript does not fold by default; unfolded, every MatMul after it counted 0 FLOPs."""
    nodes = [
        oh.make_node("Constant", [], ["rank"], value=numpy_helper.from_array(np.array([3]))),
        oh.make_node(
            "ConstantOfShape",
            ["rank"],
            ["ones"],
            value=numpy_helper.from_array(np.array([1], np.int64)),
        ),
        oh.make_node("Expand", ["x", "ones"], ["e"]),
        oh.make_node("MatMul", ["e", "w"], ["y"]),
    ]
    model = _model(nodes, [_x("x", "batch", "seq", 8)], ["y"], [_weight("w", 8, 16)])
    concrete = concrete_copy(model, {"batch": 3, "seq": 40})
    counted = count_flops(concrete)
    assert counted.by_class == {"matmul": 2 * 3 * 40 * 8 * 16}
    assert counted.uncounted == 0
    # Per node, keyed by the original model's nodes (what the cost model looks up).
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    assert counted.by_node[matmul] == ("matmul", 2 * 3 * 40 * 8 * 16)


def test_lstm_and_elementwise() -> None:
    hidden, features, steps = 5, 3, "seq"
    model = _model(
        [
            oh.make_node("LSTM", ["x", "w", "r"], ["ys"], hidden_size=hidden),
            oh.make_node("Sigmoid", ["ys"], ["y"]),
        ],
        [_x("x", steps, "batch", features)],
        ["y"],
        [_weight("w", 1, 4 * hidden, features), _weight("r", 1, 4 * hidden, hidden)],
        opset=21,
    )
    s, b = 50, 2
    assert _flops(model, {"seq": s, "batch": b}) == {
        "recurrent": 2 * s * b * 4 * hidden * (features + hidden),
        "elementwise": 4 * s * 1 * b * hidden,
    }

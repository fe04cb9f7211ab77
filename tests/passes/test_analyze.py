"""analyze: every zoo model classified right; tiny graphs for what the zoo lacks; FLOPs and
parameter counts checked against hand-computed numbers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from ai_vmm.passes.analyze import OTHER_DIM_SIZE, analyze, format_profile
from ai_vmm.passes.canonicalize import canonicalize

FLOAT = onnx.TensorProto.FLOAT
# Cheap to build (TorchScript exports or tiny dynamo graphs); the rest take 10-60 s each.
FAST_ZOO = ["small_cnn", "lstm", "gru", "ocr_crnn", "dlrm", "mlp"]
SLOW_ZOO = ["transformer_encoder", "resnet", "mobilenet", "vit", "gpt2", "llama", "t5"]
ZOO_CASES = [*FAST_ZOO, *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW_ZOO)]


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _tensor(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(_rng().standard_normal(shape).astype(np.float32), name)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[str],
    initializers: list[onnx.TensorProto],
    opset: int = 18,
) -> ir.Model:
    graph = oh.make_graph(
        nodes, "g", inputs, [oh.make_tensor_value_info(o, FLOAT, None) for o in outputs]
    )
    graph.initializer.extend(initializers)
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    return ir.serde.deserialize_model(proto)


def _attention_block(
    prefix: str,
    hidden: str,
    out: str,
    *,
    heads: int = 2,
    head: int = 4,
    past: str = "",
    mask: str = "",
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Q/K/V projections of ``hidden`` [B, S, E], split into heads, softmax(QK^T/sqrt D)V."""
    p, e = prefix, heads * head
    nodes, inits = [], [_tensor(f"{p}w{t}", e, e) for t in "qkv"]
    inits.append(numpy_helper.from_array(np.array([0, 0, heads, head], np.int64), f"{p}split"))
    inits.append(numpy_helper.from_array(np.array(head**0.5, np.float32), f"{p}sqrt_d"))
    for t in "qkv":
        nodes += [
            oh.make_node("MatMul", [hidden, f"{p}w{t}"], [f"{p}{t}2"]),
            oh.make_node("Reshape", [f"{p}{t}2", f"{p}split"], [f"{p}{t}3"]),
            oh.make_node("Transpose", [f"{p}{t}3"], [f"{p}{t}"], perm=[0, 2, 1, 3]),
        ]
    key = f"{p}k"
    if past:
        nodes.append(oh.make_node("Concat", [past, f"{p}k"], [f"{p}kfull"], axis=2))
        key = f"{p}kfull"
    nodes += [
        oh.make_node("Transpose", [key], [f"{p}kt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", [f"{p}q", f"{p}kt"], [f"{p}s"]),
        oh.make_node("Div", [f"{p}s", f"{p}sqrt_d"], [f"{p}ss"]),
    ]
    scores = f"{p}ss"
    if mask:
        nodes.append(oh.make_node("Add", [scores, mask], [f"{p}sm"]))
        scores = f"{p}sm"
    v = f"{p}v"
    if past:
        v = f"{p}v"  # values without a cache in this toy: only keys are concatenated
        nodes.append(oh.make_node("Concat", [f"{past}_v", f"{p}v"], [f"{p}vfull"], axis=2))
        v = f"{p}vfull"
    nodes += [
        oh.make_node("Softmax", [scores], [f"{p}w"], axis=-1),
        oh.make_node("MatMul", [f"{p}w", v], [out]),
    ]
    return nodes, inits


def _hidden_input(seq: int | str = "seq") -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info("hidden", FLOAT, ["batch", seq, 8])


def test_tiny_transformer_encoder() -> None:
    nodes, inits = _attention_block("a_", "hidden", "y")
    profile = analyze(_model(nodes, [_hidden_input()], ["y"], inits))
    assert profile.primary_label == "transformer-encoder"
    assert profile.patterns["attention"] == 1
    # QK^T and PV at batch 1, seq 128, 2 heads of 4: 2 * (2 * 128 * 128 * 4) each.
    assert profile.flops["attention"] == 2 * 2 * (2 * 128 * 128 * 4)
    assert profile.flops["matmul"] == 3 * 2 * 128 * 8 * 8
    assert profile.assumed_dims == {"batch": 1, "seq": OTHER_DIM_SIZE}


def test_tiny_causal_decoder_from_a_triangular_mask() -> None:
    seq = 8
    causal = np.triu(np.full((seq, seq), -np.inf, np.float32), k=1)[None, None]
    nodes, inits = _attention_block("a_", "hidden", "y", mask="causal")
    inits.append(numpy_helper.from_array(causal, "causal"))
    profile = analyze(_model(nodes, [_hidden_input(seq)], ["y"], inits))
    assert profile.primary_label == "causal-decoder"
    assert profile.patterns["causal_mask"] == 1
    assert profile.labels[0].evidence["kv_cache"] is False


def test_tiny_decoder_with_kv_cache_inputs() -> None:
    nodes, inits = _attention_block("a_", "hidden", "y", past="past")
    inputs = [
        _hidden_input(),
        oh.make_tensor_value_info("past", FLOAT, ["batch", 2, "past_seq", 4]),
        oh.make_tensor_value_info("past_v", FLOAT, ["batch", 2, "past_seq", 4]),
    ]
    profile = analyze(_model(nodes, inputs, ["y"], inits))
    assert profile.primary_label == "causal-decoder"
    assert profile.patterns["kv_cache"] == 2
    assert profile.labels[0].evidence["kv_cache"] is True
    assert profile.dynamic_dims["past"] == ["batch", 2, "past_seq", 4]


def _scan_rnn() -> ir.Model:
    body = oh.make_graph(
        [
            oh.make_node("MatMul", ["x_t", "wx"], ["a"]),
            oh.make_node("MatMul", ["h_prev", "wh"], ["b"]),
            oh.make_node("Add", ["a", "b"], ["c"]),
            oh.make_node("Tanh", ["c"], ["h_next"]),
            oh.make_node("Identity", ["h_next"], ["y_t"]),
        ],
        "cell",
        [
            oh.make_tensor_value_info("h_prev", FLOAT, ["batch", 8]),
            oh.make_tensor_value_info("x_t", FLOAT, ["batch", 4]),
        ],
        [
            oh.make_tensor_value_info("h_next", FLOAT, ["batch", 8]),
            oh.make_tensor_value_info("y_t", FLOAT, ["batch", 8]),
        ],
    )
    scan = oh.make_node("Scan", ["h0", "x"], ["h", "ys"], body=body, num_scan_inputs=1)
    return _model(
        [scan],
        [
            oh.make_tensor_value_info("h0", FLOAT, ["batch", 8]),
            oh.make_tensor_value_info("x", FLOAT, ["seq", "batch", 4]),
        ],
        ["ys"],
        [_tensor("wx", 4, 8), _tensor("wh", 8, 8)],
    )


def _loop_rnn() -> ir.Model:
    body = oh.make_graph(
        [
            oh.make_node("MatMul", ["h_prev", "wh"], ["a"]),
            oh.make_node("Tanh", ["a"], ["h_next"]),
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "step",
        [
            oh.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            oh.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
            oh.make_tensor_value_info("h_prev", FLOAT, ["batch", 8]),
        ],
        [
            oh.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
            oh.make_tensor_value_info("h_next", FLOAT, ["batch", 8]),
        ],
    )
    loop = oh.make_node("Loop", ["steps", "", "h0"], ["h"], body=body)
    return _model(
        [loop],
        [oh.make_tensor_value_info("h0", FLOAT, ["batch", 8])],
        ["h"],
        [_tensor("wh", 8, 8), numpy_helper.from_array(np.array(5, np.int64), "steps")],
    )


@pytest.mark.parametrize("build", [_scan_rnn, _loop_rnn], ids=["scan", "loop"])
def test_rnn_written_as_scan_or_loop(build: Callable[[], ir.Model]) -> None:
    profile = analyze(build())
    assert profile.primary_label == "rnn"
    assert profile.patterns["recurrence"] == 1
    assert profile.flops["recurrent"] > 0


def test_scan_flops_count_every_step() -> None:
    profile = analyze(_scan_rnn())
    # Per step at batch 1: 2*4*8 + 2*8*8 MatMul FLOPs, 8 Add, 4*8 Tanh; 128 steps.
    assert profile.flops["recurrent"] == 128 * (2 * 4 * 8 + 2 * 8 * 8 + 8 + 4 * 8)


def test_detector_with_non_max_suppression() -> None:
    nodes = [
        oh.make_node("Conv", ["image", "w1"], ["f"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["f"], ["fr"]),
        oh.make_node("Conv", ["fr", "wb"], ["box_map"]),
        oh.make_node("Conv", ["fr", "ws"], ["score_map"]),
        oh.make_node("Sigmoid", ["score_map"], ["score_prob"]),
        oh.make_node("Reshape", ["box_map", "box_shape"], ["boxes_t"]),
        oh.make_node("Transpose", ["boxes_t"], ["boxes"], perm=[0, 2, 1]),
        oh.make_node("Reshape", ["score_prob", "score_shape"], ["scores"]),
        oh.make_node(
            "NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "min_score"], ["selected"]
        ),
    ]
    inits = [
        _tensor("w1", 8, 3, 3, 3),
        _tensor("wb", 4, 8, 1, 1),
        _tensor("ws", 1, 8, 1, 1),
        numpy_helper.from_array(np.array([1, 4, -1], np.int64), "box_shape"),
        numpy_helper.from_array(np.array([1, 1, -1], np.int64), "score_shape"),
        numpy_helper.from_array(np.array([10], np.int64), "max_out"),
        numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
        numpy_helper.from_array(np.array([0.3], np.float32), "min_score"),
    ]
    graph = oh.make_graph(
        nodes,
        "det",
        [oh.make_tensor_value_info("image", FLOAT, [1, 3, 16, 16])],
        [oh.make_tensor_value_info("selected", onnx.TensorProto.INT64, None)],
        inits,
    )
    model = ir.serde.deserialize_model(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    )
    profile = analyze(model)
    assert [label.label for label in profile.labels[:2]] == ["detector", "cnn"]
    assert profile.patterns["nms"] == 1
    assert profile.dynamic_dims == {}


def test_parameters_in_constant_nodes_count() -> None:
    weight = _rng().standard_normal((16, 8)).astype(np.float32)
    nodes = [
        oh.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
        oh.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([-1, 8]))),
        oh.make_node("MatMul", ["x", "w"], ["m"]),
        oh.make_node("Add", ["m", "b"], ["a"]),
        oh.make_node("Relu", ["a"], ["r"]),
        oh.make_node("Reshape", ["r", "shape"], ["y"]),
    ]
    model = _model(
        nodes, [oh.make_tensor_value_info("x", FLOAT, ["n", 16])], ["y"], [_tensor("b", 8)]
    )
    before = ir.serde.serialize_model(model).SerializeToString()
    profile = analyze(model)
    assert ir.serde.serialize_model(model).SerializeToString() == before  # unchanged
    assert profile.params == 16 * 8 + 8  # the int64 shape is not a parameter
    assert profile.params_in_constant_nodes == 16 * 8
    assert profile.param_bytes == 4 * (16 * 8 + 8)
    assert profile.primary_label == "mlp"
    assert profile.flops == {"matmul": 2 * 16 * 8, "elementwise": 2 * 8}
    assert profile.op_histogram == {"Constant": 2, "Add": 1, "MatMul": 1, "Relu": 1, "Reshape": 1}
    # Peak live tensors at batch 1: x (64 B) + m (32 B) while the MatMul runs, or m + a.
    assert profile.activation_bytes == 96


@pytest.mark.parametrize("name", ZOO_CASES)
def test_zoo_model_classified(name: str, zoo: ModuleType, zoo_model: Callable[[str], Path]) -> None:
    model = ir.load(zoo_model(name))
    canonicalize(model)
    profile = analyze(model)
    expected = zoo.ZOO[name].architecture
    assert profile.primary_label == expected, format_profile(profile)
    assert profile.labels[0].confidence >= 0.8
    assert profile.labels[0].evidence["patterns"] or expected == "mlp"
    assert profile.total_flops > 0 and profile.params > 0
    json.dumps(profile.to_json())  # the report can hold it
    text = format_profile(profile)
    assert expected in text and "FLOPs" in text

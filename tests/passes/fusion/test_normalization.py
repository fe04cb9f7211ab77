"""normalization family: decomposed LayerNorm / RMSNorm -> LayerNormalization / RMSNormalization.

Tolerance: rtol 1e-4, atol 1e-5 (the fused kernels accumulate mean and variance differently).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx.helper as oh

RTOL, ATOL = 1e-4, 1e-5
# onnxscript's patterns match ReduceMean's attributes only when written out (torch writes them).
_SPELLED_OUT = {"keepdims": 1, "noop_with_empty_axes": 0}


def _const(value: float) -> np.ndarray:
    return np.array(value, np.float32)


def test_layer_norm_with_bias(kit: Any) -> None:
    model = kit.make_model(
        [
            oh.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=1),
            oh.make_node("Sub", ["x", "mean"], ["d"]),
            oh.make_node("Pow", ["d", "two"], ["d2"]),
            oh.make_node("ReduceMean", ["d2", "axes"], ["var"], keepdims=1),
            oh.make_node("Add", ["var", "eps"], ["ve"]),
            oh.make_node("Sqrt", ["ve"], ["std"]),
            oh.make_node("Div", ["d", "std"], ["n"]),
            oh.make_node("Mul", ["n", "scale"], ["s"]),
            oh.make_node("Add", ["s", "bias"], ["y"]),
        ],
        [("x", ["b", "s", 16])],
        ["y"],
        {
            "axes": np.array([-1], np.int64),
            "two": _const(2.0),
            "eps": _const(1e-5),
            "scale": kit.randn(16),
            "bias": kit.randn(16),
        },
    )
    fused = kit.fuse_and_compare(model, ["layer_norm"], {"x": kit.randn(2, 5, 16) * 3 + 1})
    assert fused.result.per_rule == {"LayerNormFusion": 1, "LayerNormBiasFusion": 1}
    assert kit.op_counts(fused.model) == {"LayerNormalization": 1}
    [node] = fused.model.graph
    assert len(node.inputs) == 3  # the bias was absorbed
    assert node.attributes.get_float("epsilon") == np.float32(1e-5)
    fused.assert_close(RTOL, ATOL)


def test_rms_norm_raises_the_opset(kit: Any) -> None:
    """Llama's RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, weight first."""
    model = kit.make_model(
        [
            oh.make_node("Pow", ["x", "two"], ["sq"]),
            oh.make_node("ReduceMean", ["sq", "axes"], ["ms"], **_SPELLED_OUT),
            oh.make_node("Add", ["ms", "eps"], ["mse"]),
            oh.make_node("Sqrt", ["mse"], ["rms"]),
            oh.make_node("Reciprocal", ["rms"], ["inv"]),
            oh.make_node("Mul", ["x", "inv"], ["n"]),
            oh.make_node("Mul", ["weight", "n"], ["y"]),
        ],
        [("x", ["b", "s", 16])],
        ["y"],
        {
            "axes": np.array([-1], np.int64),
            "two": _const(2.0),
            "eps": _const(1e-6),
            "weight": kit.randn(16),
        },
    )
    assert model.opset_imports[""] == 18
    fused = kit.fuse_and_compare(model, ["rms_norm"], {"x": kit.randn(2, 5, 16)})
    assert fused.result.per_rule == {"RmsNormFusion2": 1}
    assert kit.op_counts(fused.model) == {"RMSNormalization": 1}
    assert fused.model.opset_imports[""] == 23
    fused.assert_close(RTOL, ATOL)


def test_rms_norm_with_tensor_epsilon_is_a_near_miss(kit: Any) -> None:
    model = kit.make_model(
        [
            oh.make_node("Pow", ["x", "two"], ["sq"]),
            oh.make_node("ReduceMean", ["sq", "axes"], ["ms"], **_SPELLED_OUT),
            oh.make_node("Add", ["ms", "eps"], ["mse"]),
            oh.make_node("Sqrt", ["mse"], ["rms"]),
            oh.make_node("Reciprocal", ["rms"], ["inv"]),
            oh.make_node("Mul", ["x", "inv"], ["n"]),
            oh.make_node("Mul", ["n", "weight"], ["y"]),
        ],
        [("x", ["b", 16])],
        ["y"],
        {
            "axes": np.array([-1], np.int64),
            "two": _const(2.0),
            "eps": np.full((2, 1), 1e-6, np.float32),
            "weight": kit.randn(16),
        },
    )
    fused = kit.fuse_and_compare(model, ["rms_norm"], {"x": kit.randn(2, 16)}, trace=True)
    assert fused.result.count == 0
    assert [m.reason for m in fused.result.near_misses] == ["Epsilon is not a float value."]

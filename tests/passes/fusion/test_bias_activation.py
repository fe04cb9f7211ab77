"""bias_activation family: biases absorbed into Conv / Gemm, activation chains merged.

Tolerance: rtol 1e-5, atol 1e-5 (a bias moved into the kernel changes the summation order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx.helper as oh
import pytest

RTOL, ATOL = 1e-5, 1e-5


@pytest.mark.parametrize(
    ("bias_shape", "conv_has_bias"), [((1, 4, 1, 1), False), ((4, 1, 1), True), ((1,), False)]
)
def test_per_channel_add_becomes_conv_bias(
    kit: Any, bias_shape: tuple[int, ...], conv_has_bias: bool
) -> None:
    inits = {"w": kit.randn(4, 3, 3, 3), "c": kit.randn(*bias_shape)}
    conv_inputs = ["x", "w"]
    if conv_has_bias:
        inits["b"] = kit.randn(4)
        conv_inputs.append("b")
    model = kit.make_model(
        [oh.make_node("Conv", conv_inputs, ["conv"]), oh.make_node("Add", ["c", "conv"], ["y"])],
        [("x", ["n", 3, 7, 7])],
        ["y"],
        inits,
    )
    fused = kit.fuse_and_compare(model, ["conv_add_bias"], {"x": kit.randn(2, 3, 7, 7)})
    assert fused.result.per_rule == {"ConvAddBias": 1}
    assert kit.op_counts(fused.model) == {"Conv": 1}
    fused.assert_close(RTOL, ATOL)


def test_add_varying_over_space_is_declined(kit: Any) -> None:
    model = kit.make_model(
        [oh.make_node("Conv", ["x", "w"], ["conv"]), oh.make_node("Add", ["conv", "c"], ["y"])],
        [("x", ["n", 3, 5, 5])],
        ["y"],
        {"w": kit.randn(4, 3, 1, 1), "c": kit.randn(1, 4, 5, 5)},
    )
    fused = kit.fuse_and_compare(model, ["conv_add_bias"], {"x": kit.randn(1, 3, 5, 5)}, trace=True)
    assert fused.result.count == 0
    assert {m.reason for m in fused.result.near_misses} == {
        "the added tensor [1, 4, 5, 5] is not per-channel"
    }
    fused.assert_close(0.0, 0.0)


def test_matmul_add_becomes_gemm_and_3d_matmul_does_not(kit: Any) -> None:
    model = kit.make_model(
        [
            oh.make_node("MatMul", ["x", "w"], ["m"]),
            oh.make_node("Add", ["m", "b"], ["y"]),
            oh.make_node("MatMul", ["x3", "w"], ["m3"]),
            oh.make_node("Add", ["m3", "b"], ["y3"]),
        ],
        [("x", ["n", 16]), ("x3", ["n", 4, 16])],
        ["y", "y3"],
        {"w": kit.randn(16, 8), "b": kit.randn(8)},
    )
    feeds = {"x": kit.randn(3, 16), "x3": kit.randn(3, 4, 16)}
    fused = kit.fuse_and_compare(model, ["matmul_add_to_gemm"], feeds, trace=True)
    assert fused.result.per_rule == {"MatMulAddToGemm": 1}
    assert kit.op_counts(fused.model) == {"Gemm": 1, "MatMul": 1, "Add": 1}
    assert [m.reason for m in fused.result.near_misses] == ["Rank of input_a and input_b must be 2"]
    fused.assert_close(RTOL, ATOL)


def test_matmul_add_with_matrix_bias_is_declined(kit: Any) -> None:
    """A [K, M, N] bias would grow the output's rank: Gemm cannot take it."""
    model = kit.make_model(
        [oh.make_node("MatMul", ["x", "w"], ["m"]), oh.make_node("Add", ["m", "b"], ["y"])],
        [("x", [3, 16])],
        ["y"],
        {"w": kit.randn(16, 8), "b": kit.randn(2, 3, 8)},
    )
    fused = kit.fuse_and_compare(model, ["matmul_add_to_gemm"], {"x": kit.randn(3, 16)})
    assert fused.result.count == 0
    fused.assert_close(0.0, 0.0)


def test_activation_chains_merge(kit: Any) -> None:
    model = kit.make_model(
        [
            oh.make_node("Relu", ["x"], ["r1"]),
            oh.make_node("Relu", ["r1"], ["y1"]),
            oh.make_node("Max", ["x", "lo"], ["mx"]),
            oh.make_node("Min", ["mx", "hi"], ["y2"]),
        ],
        [("x", ["n", 6])],
        ["y1", "y2"],
        {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)},
    )
    feeds = {"x": kit.randn(4, 6) * 5}
    fused = kit.fuse_and_compare(model, ["relu_clip_merge", "min_max_to_clip"], feeds)
    assert fused.result.count == 1
    assert kit.op_counts(fused.model) == {"Relu": 1, "Clip": 1}
    fused.assert_close(0.0, 0.0)


def test_hardswish(kit: Any) -> None:
    model = kit.make_model(
        [
            oh.make_node("Add", ["x", "three"], ["a"]),
            oh.make_node("Clip", ["a", "zero", "six"], ["c"]),
            oh.make_node("Div", ["c", "six"], ["hs"]),
            oh.make_node("Mul", ["x", "hs"], ["y"]),
        ],
        [("x", ["n", 6])],
        ["y"],
        {name: np.array(v, np.float32) for name, v in (("three", 3), ("zero", 0), ("six", 6))},
    )
    fused = kit.fuse_and_compare(model, ["hardswish"], {"x": kit.randn(4, 6) * 4})
    # x * (Clip(x + 3, 0, 6) / 6): first the HardSigmoid, then x * HardSigmoid(x).
    assert fused.result.per_rule == {"HardSigmoidFusion": 1, "HardSwishFusionFromHardSigmoid": 1}
    assert kit.op_counts(fused.model) == {"HardSwish": 1}
    fused.assert_close(RTOL, ATOL)

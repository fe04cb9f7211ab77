"""ort_contrib family: com.microsoft fused ops for the onnxruntime target.

Tolerance: rtol 1e-5, atol 1e-5 (rtol 1e-4 for SkipLayerNormalization's fused reduction).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx.helper as oh
import pytest

from ai_vmm.passes.fusion import FUSIONS

RTOL, ATOL = 1e-5, 1e-5


def _ms_ops(kit: Any, model: Any) -> dict[str, int]:
    return {
        n.op_type: kit.op_counts(model)[n.op_type]
        for n in model.graph
        if n.domain == "com.microsoft"
    }


def test_skip_layer_norm(kit: Any) -> None:
    model = kit.make_model(
        [
            oh.make_node("Add", ["x", "skip"], ["sum"]),
            oh.make_node(
                "LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5
            ),
        ],
        [("x", ["b", "s", 16]), ("skip", ["b", "s", 16])],
        ["y"],
        {"gamma": kit.randn(16), "beta": kit.randn(16)},
    )
    feeds = {"x": kit.randn(2, 3, 16), "skip": kit.randn(2, 3, 16)}
    fused = kit.fuse_and_compare(model, ["skip_layer_norm"], feeds)
    assert fused.result.per_rule == {"SkipLayerNorm": 1}
    assert _ms_ops(kit, fused.model) == {"SkipLayerNormalization": 1}
    fused.assert_close(1e-4, ATOL)


def test_bias_gelu(kit: Any) -> None:
    model = kit.make_model(
        [oh.make_node("Add", ["x", "b"], ["xb"]), oh.make_node("Gelu", ["xb"], ["y"])],
        [("x", ["n", 16])],
        ["y"],
        {"b": kit.randn(16)},
        opset=20,
    )
    fused = kit.fuse_and_compare(model, ["bias_gelu"], {"x": kit.randn(3, 16)})
    assert fused.result.count == 1
    assert _ms_ops(kit, fused.model) == {"BiasGelu": 1}
    fused.assert_close(RTOL, ATOL)


def test_fused_matmul(kit: Any) -> None:
    model = kit.make_model(
        [
            oh.make_node("Transpose", ["b"], ["bt"], perm=[0, 2, 1]),
            oh.make_node("MatMul", ["a", "bt"], ["y"]),
        ],
        [("a", [2, 5, 8]), ("b", [2, 6, 8])],
        ["y"],
    )
    fused = kit.fuse_and_compare(
        model, ["fused_matmul"], {"a": kit.randn(2, 5, 8), "b": kit.randn(2, 6, 8)}
    )
    assert fused.result.count == 1
    assert _ms_ops(kit, fused.model) == {"FusedMatMul": 1}
    fused.assert_close(RTOL, ATOL)


@pytest.mark.parametrize("activation", ["Relu", "Clip", "LeakyRelu"])
def test_fused_conv(kit: Any, activation: str) -> None:
    extra = {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    act_inputs = ["c", "lo", "hi"] if activation == "Clip" else ["c"]
    attrs = {"alpha": 0.2} if activation == "LeakyRelu" else {}
    model = kit.make_model(
        [
            oh.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            oh.make_node(activation, act_inputs, ["y"], **attrs),
        ],
        [("x", ["n", 3, 6, 6])],
        ["y"],
        {"w": kit.randn(4, 3, 3, 3), "b": kit.randn(4), **extra},
    )
    fused = kit.fuse_and_compare(model, ["fused_conv"], {"x": kit.randn(2, 3, 6, 6) * 2})
    assert fused.result.per_rule == {f"FusedConv{activation}": 1}
    assert _ms_ops(kit, fused.model) == {"FusedConv": 1}
    fused.assert_close(RTOL, ATOL)


def test_fused_gemm(kit: Any) -> None:
    model = kit.make_model(
        [
            oh.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
            oh.make_node("LeakyRelu", ["g"], ["y"], alpha=0.1),
        ],
        [("x", ["n", 8])],
        ["y"],
        {"w": kit.randn(4, 8), "b": kit.randn(4)},
    )
    fused = kit.fuse_and_compare(model, ["fused_gemm"], {"x": kit.randn(3, 8)})
    assert fused.result.per_rule == {"FusedGemmLeakyRelu": 1}
    assert _ms_ops(kit, fused.model) == {"FusedGemm": 1}
    fused.assert_close(RTOL, ATOL)


def test_contrib_fusions_are_for_onnxruntime_only() -> None:
    family = [f for f in FUSIONS.values() if f.family == "ort_contrib"]
    assert len(family) == 5
    for fusion in family:
        assert fusion.targets == frozenset({"onnxruntime"})
        assert all(domain == "com.microsoft" for domain, _ in fusion.produces)

"""conv_bn family: BatchNormalization folded into Conv / ConvTranspose / Gemm.

Tolerance: rtol 1e-4, atol 1e-5 (the folded weights are rounded once more in float32).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx.helper as oh
import pytest

RTOL, ATOL = 1e-4, 1e-5


def _bn_params(kit: Any, channels: int) -> dict[str, np.ndarray]:
    """Batch-norm statistics far from the identity, so a wrong fold shows in the numbers."""
    return {
        "gamma": kit.randn(channels) * 0.5 + 1.0,
        "beta": kit.randn(channels),
        "mean": kit.randn(channels) * 0.3,
        "var": (kit.rng.random(channels) + 0.5).astype(np.float32),
    }


def _bn(x: str, y: str) -> Any:
    return oh.make_node(
        "BatchNormalization", [x, "gamma", "beta", "mean", "var"], [y], epsilon=1e-3
    )


@pytest.mark.parametrize("producer", ["Conv", "ConvTranspose"])
def test_batchnorm_folds_into_conv(kit: Any, producer: str) -> None:
    weight = kit.randn(4, 3, 3, 3) if producer == "Conv" else kit.randn(3, 4, 3, 3)
    model = kit.make_model(
        [oh.make_node(producer, ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), _bn("c", "y")],
        [("x", ["n", 3, 8, 8])],
        ["y"],
        {"w": weight, "b": kit.randn(4), **_bn_params(kit, 4)},
    )
    step = "conv_bn" if producer == "Conv" else "conv_transpose_bn"
    fused = kit.fuse_and_compare(model, [step], {"x": kit.randn(2, 3, 8, 8)})
    assert fused.result.count == 1
    assert kit.op_counts(fused.model) == {producer: 1}
    fused.assert_close(RTOL, ATOL)


def test_batchnorm_folds_into_gemm(kit: Any) -> None:
    model = kit.make_model(
        [oh.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), _bn("g", "y")],
        [("x", ["n", 16])],
        ["y"],
        {"w": kit.randn(8, 16), "b": kit.randn(8), **_bn_params(kit, 8)},
    )
    fused = kit.fuse_and_compare(model, ["gemm_bn"], {"x": kit.randn(5, 16)})
    assert fused.result.per_rule == {"FuseBatchNormIntoGemm": 1}
    assert kit.op_counts(fused.model) == {"Gemm": 1}
    fused.assert_close(RTOL, ATOL)


def test_batchnorm_with_fed_statistics_is_a_near_miss(kit: Any) -> None:
    """Statistics that are graph inputs cannot be folded: the tracer says why."""
    params = _bn_params(kit, 4)
    model = kit.make_model(
        [oh.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y")],
        [("x", ["n", 3, 6, 6]), ("gamma", [4])],
        ["y"],
        {"w": kit.randn(4, 3, 1, 1), **{k: v for k, v in params.items() if k != "gamma"}},
    )
    feeds = {"x": kit.randn(1, 3, 6, 6), "gamma": params["gamma"]}
    fused = kit.fuse_and_compare(model, ["conv_bn"], feeds, trace=True)
    assert fused.result.count == 0
    assert kit.op_counts(fused.model)["BatchNormalization"] == 1
    [miss] = fused.result.near_misses
    assert miss.op_type == "BatchNormalization"
    assert "gamma is not a constant initializer" in miss.reason
    fused.assert_close(0.0, 0.0)

"""gelu family: erf and tanh GELU subgraphs -> Gelu (opset 20).

Tolerance: rtol 1e-5, atol 1e-6 for the erf form (ONNX Runtime's Gelu kernel computes the same
formula); atol 1e-5 for the tanh form.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx.helper as oh
import pytest

Node = Any


def _scalar(value: float) -> np.ndarray:
    return np.array(value, np.float32)


def _erf_gelu(order: str, half: float = 0.5) -> tuple[list[Node], dict[str, np.ndarray]]:
    """0.5 * x * (1 + erf(x / sqrt 2)), the product associated as ``order`` says."""
    nodes = [
        oh.make_node("Div", ["x", "root2"], ["xs"]),
        oh.make_node("Erf", ["xs"], ["e"]),
        oh.make_node("Add", ["one", "e"], ["bracket"]),  # 1 + erf: constant first
    ]
    if order == "x_half_first":
        nodes += [
            oh.make_node("Mul", ["half", "x"], ["hx"]),
            oh.make_node("Mul", ["hx", "bracket"], ["y"]),
        ]
    elif order == "half_bracket_first":
        nodes += [
            oh.make_node("Mul", ["half", "bracket"], ["hb"]),
            oh.make_node("Mul", ["x", "hb"], ["y"]),
        ]
    else:
        nodes += [
            oh.make_node("Mul", ["bracket", "x"], ["xb"]),
            oh.make_node("Mul", ["half", "xb"], ["y"]),
        ]
    constants = {"root2": _scalar(math.sqrt(2)), "one": _scalar(1), "half": _scalar(half)}
    return nodes, constants


@pytest.mark.parametrize("order", ["x_half_first", "half_bracket_first", "x_bracket_first"])
def test_erf_gelu(kit: Any, order: str) -> None:
    nodes, constants = _erf_gelu(order)
    model = kit.make_model(nodes, [("x", ["n", 32])], ["y"], constants)
    fused = kit.fuse_and_compare(model, ["gelu_erf"], {"x": kit.randn(4, 32) * 3})
    assert fused.result.per_rule == {f"GeluErf_{order}": 1}
    assert kit.op_counts(fused.model) == {"Gelu": 1}
    [gelu] = fused.model.graph
    assert gelu.attributes.get_string("approximate", "none") == "none"
    assert fused.model.opset_imports[""] == 20
    fused.assert_close(1e-5, 1e-6)


def test_tanh_gelu_gpt2_form(kit: Any) -> None:
    """GPT-2's export: (x * 0.5) * (1 + tanh(0.79788 * (x + 0.044715 * x^3)))."""
    nodes = [
        oh.make_node("Mul", ["x", "half"], ["hx"]),
        oh.make_node("Pow", ["x", "three"], ["cube"]),
        oh.make_node("Mul", ["cube", "coef"], ["k"]),
        oh.make_node("Add", ["x", "k"], ["inner"]),
        oh.make_node("Mul", ["inner", "root"], ["scaled"]),
        oh.make_node("Tanh", ["scaled"], ["t"]),
        oh.make_node("Add", ["t", "one"], ["bracket"]),
        oh.make_node("Mul", ["hx", "bracket"], ["y"]),
    ]
    constants = {
        "half": _scalar(0.5),
        "three": _scalar(3),
        "coef": _scalar(0.044715),
        "root": _scalar(math.sqrt(2 / math.pi)),
        "one": _scalar(1),
    }
    model = kit.make_model(nodes, [("x", ["n", 32])], ["y"], constants)
    fused = kit.fuse_and_compare(model, ["gelu_tanh"], {"x": kit.randn(4, 32) * 3})
    assert fused.result.count == 1
    assert kit.op_counts(fused.model) == {"Gelu": 1}
    [gelu] = fused.model.graph
    assert gelu.attributes.get_string("approximate") == "tanh"
    fused.assert_close(1e-5, 1e-5)


def test_wrong_constant_is_a_near_miss_with_its_value(kit: Any) -> None:
    nodes, constants = _erf_gelu("x_half_first", half=0.6)
    model = kit.make_model(nodes, [("x", ["n", 8])], ["y"], constants)
    fused = kit.fuse_and_compare(model, ["gelu_erf"], {"x": kit.randn(2, 8)}, trace=True)
    assert fused.result.count == 0
    assert kit.op_counts(fused.model)["Erf"] == 1
    reasons = {m.reason for m in fused.result.near_misses}
    assert reasons == {"the half factor is 0.6, expected 0.5"}
    fused.assert_close(0.0, 0.0)

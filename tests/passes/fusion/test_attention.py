"""attention family: MatMul-Softmax-MatMul -> Attention (opset 23), grouped-query K/V.

Tolerance: rtol 1e-4, atol 1e-5 (the fused kernel sums the softmax in another order).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx.helper as oh
import pytest

from ai_vmm.passes.fusion import FUSIONS

RTOL, ATOL = 1e-4, 1e-5
B, H, S, D = 2, 4, 6, 8


def _scalar(value: float) -> np.ndarray:
    return np.array(value, np.float32)


def _core(key_form: str, nan_guard: bool) -> tuple[list[Any], dict[str, np.ndarray]]:
    """BERT-style: q and K^T each scaled by D^-1/4, an additive mask, softmax, times V."""
    constants = {"s": _scalar(D**-0.25), "zero": _scalar(0.0)}
    if key_form == "transpose":
        nodes = [oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2])]
    elif key_form == "reshape_round_trip":
        constants |= {
            "to3d": np.array([B * H, S, D], np.int64),
            "to4d": np.array([B, H, D, S], np.int64),
        }
        nodes = [
            oh.make_node("Reshape", ["k", "to3d"], ["k3"]),
            oh.make_node("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
            oh.make_node("Reshape", ["k3t", "to4d"], ["kt"]),
        ]
    else:  # key given as [B, S, H, D]
        nodes = [oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1])]
    nodes += [
        oh.make_node("Mul", ["q", "s"], ["qs"]),
        oh.make_node("Mul", ["kt", "s"], ["kts"]),
        oh.make_node("MatMul", ["qs", "kts"], ["scores"]),
        oh.make_node("Add", ["scores", "mask"], ["masked"]),
        oh.make_node("Softmax", ["masked"], ["p" if nan_guard else "w"], axis=-1),
    ]
    if nan_guard:
        nodes += [
            oh.make_node("IsNaN", ["p"], ["nan"]),
            oh.make_node("Where", ["nan", "zero", "p"], ["w"]),
        ]
    nodes.append(oh.make_node("MatMul", ["w", "v"], ["y"]))
    return nodes, constants


def _mask(kit: Any, shape: tuple[int, ...]) -> np.ndarray:
    return np.where(kit.rng.random(shape) < 0.3, -1e9, 0.0).astype(np.float32)


@pytest.mark.parametrize(
    ("key_form", "nan_guard"),
    [
        ("transpose", True),
        ("reshape_round_trip", True),
        ("reshape_round_trip", False),
        ("bshd", False),
    ],
)
def test_attention_core(kit: Any, key_form: str, nan_guard: bool) -> None:
    nodes, constants = _core(key_form, nan_guard)
    key_shape = [B, S, H, D] if key_form == "bshd" else [B, H, S, D]
    model = kit.make_model(
        nodes,
        [("q", [B, H, S, D]), ("k", key_shape), ("v", [B, H, S, D]), ("mask", [B, 1, S, S])],
        ["y"],
        constants,
    )
    feeds = {
        "q": kit.randn(B, H, S, D),
        "k": kit.randn(*key_shape),
        "v": kit.randn(B, H, S, D),
        "mask": _mask(kit, (B, 1, S, S)),
    }
    # Guarded cores (torch SDPA) and unguarded ones (eager) are two steps of one pattern.
    step, rule = (
        ("attention", "SdpaToAttention")
        if nan_guard
        else ("attention_unguarded", "EagerToAttention")
    )
    fused = kit.fuse_and_compare(model, [step], feeds)
    assert fused.result.per_rule == {rule: 1}
    counts = kit.op_counts(fused.model)
    assert counts["Attention"] == 1
    assert "Softmax" not in counts and "MatMul" not in counts
    assert fused.model.opset_imports[""] == 23
    [attention] = [n for n in fused.model.graph if n.op_type == "Attention"]
    assert "scale" not in attention.attributes  # (D^-1/4)^2 is the default 1/sqrt(D)
    fused.assert_close(RTOL, ATOL)


def test_t5_style_unscaled_with_bias_and_mask(kit: Any) -> None:
    """No scaling (scale=1 must be explicit) and two additive terms summed into one mask."""
    nodes = [
        oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", ["q", "kt"], ["scores"]),
        oh.make_node("Add", ["scores", "bias"], ["biased"]),
        oh.make_node("Add", ["biased", "mask"], ["masked"]),
        oh.make_node("Softmax", ["masked"], ["w"], axis=-1),
        oh.make_node("MatMul", ["w", "v"], ["y"]),
    ]
    model = kit.make_model(
        nodes,
        [("q", [B, H, S, D]), ("k", [B, H, S, D]), ("v", [B, H, S, D]), ("mask", [B, 1, S, S])],
        ["y"],
        {"bias": kit.randn(1, H, S, S)},
    )
    feeds = {n: kit.randn(B, H, S, D) for n in "qkv"} | {"mask": _mask(kit, (B, 1, S, S))}
    fused = kit.fuse_and_compare(model, ["attention_unguarded"], feeds)
    assert fused.result.count == 1
    [attention] = [n for n in fused.model.graph if n.op_type == "Attention"]
    assert attention.attributes.get_float("scale") == 1.0
    assert sorted(kit.op_counts(fused.model).items()) == [("Add", 1), ("Attention", 1)]
    fused.assert_close(RTOL, ATOL)


def _repeat_kv_model(kit: Any, axis: int) -> tuple[Any, dict[str, np.ndarray]]:
    """Llama's repeat_kv: K, V [B, 2, S, D] unsqueezed at ``axis``, expanded x2, reshaped to 4
    heads (``axis`` 2: head ``h`` reads key/value head ``h // 2``; ``axis`` 1 interleaves)."""
    kv_heads = 2
    grown = [kv_heads, H // kv_heads] if axis == 2 else [H // kv_heads, kv_heads]
    repeat = [oh.make_node("Unsqueeze", [f"{t}", "axes"], [f"{t}u"]) for t in ("k", "v")] + [
        oh.make_node("Expand", [f"{t}u", "expanded"], [f"{t}e"]) for t in ("k", "v")
    ]
    repeat += [oh.make_node("Reshape", [f"{t}e", "merged"], [f"{t}r"]) for t in ("k", "v")]
    nodes = [
        *repeat,
        oh.make_node("Transpose", ["kr"], ["kt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", ["q", "kt"], ["scores"]),
        oh.make_node("Div", ["scores", "sqrt_d"], ["scaled"]),
        oh.make_node("Softmax", ["scaled"], ["w"], axis=-1),
        oh.make_node("MatMul", ["w", "vr"], ["y"]),
    ]
    model = kit.make_model(
        nodes,
        [("q", [B, H, S, D]), ("k", [B, kv_heads, S, D]), ("v", [B, kv_heads, S, D])],
        ["y"],
        {
            "axes": np.array([axis], np.int64),
            "expanded": np.array([B, *grown, S, D], np.int64),
            "merged": np.array([B, H, S, D], np.int64),
            "sqrt_d": _scalar(math.sqrt(D)),
        },
    )
    feeds = {"q": kit.randn(B, H, S, D), "k": kit.randn(B, 2, S, D), "v": kit.randn(B, 2, S, D)}
    return model, feeds


def test_grouped_query_attention_drops_repeat_kv(kit: Any) -> None:
    model, feeds = _repeat_kv_model(kit, axis=2)
    fused = kit.fuse_and_compare(model, ["attention_unguarded", "attention_gqa"], feeds)
    assert fused.result.per_rule == {"AttentionDropRepeatKv": 1}
    assert kit.op_counts(fused.model) == {"Attention": 1}
    [attention] = fused.model.graph
    assert attention.inputs[1] is not None and attention.inputs[1].name == "k"
    assert attention.attributes.get_int("kv_num_heads") == 2
    fused.assert_close(RTOL, ATOL)


def test_heads_repeated_in_another_order_are_a_near_miss(kit: Any) -> None:
    """Repeats on axis 1 interleave the heads (head ``h`` reads ``h % 2``), not the order
    ``Attention`` assumes: the expansion stays, and the result with it."""
    model, feeds = _repeat_kv_model(kit, axis=1)
    fused = kit.fuse_and_compare(model, ["attention_unguarded", "attention_gqa"], feeds, trace=True)
    assert fused.result.count == 0
    assert "Expand" in kit.op_counts(fused.model)
    assert any("not unsqueezed at axis 2" in miss.reason for miss in fused.result.near_misses)
    fused.assert_close(RTOL, ATOL)


def test_guarded_and_unguarded_steps_do_not_overlap(kit: Any) -> None:
    nodes, constants = _core("transpose", nan_guard=True)
    model = kit.make_model(
        nodes,
        [("q", [B, H, S, D]), ("k", [B, H, S, D]), ("v", [B, H, S, D]), ("mask", [B, 1, S, S])],
        ["y"],
        constants,
    )
    feeds = {n: kit.randn(B, H, S, D) for n in "qkv"} | {"mask": _mask(kit, (B, 1, S, S))}
    fused = kit.fuse_and_compare(model, ["attention_unguarded"], feeds)
    assert fused.result.count == 0
    assert FUSIONS["attention_unguarded"].avoid_on.keys() == {"openvino"}
    assert not FUSIONS["attention"].avoid_on


def test_mask_broadcast_over_queries_is_a_near_miss(kit: Any) -> None:
    """ONNX Runtime's Attention needs the mask's query axis spelled out: declined, with why."""
    nodes, constants = _core("transpose", nan_guard=False)
    model = kit.make_model(
        nodes,
        [("q", [B, H, S, D]), ("k", [B, H, S, D]), ("v", [B, H, S, D]), ("mask", [B, 1, 1, S])],
        ["y"],
        constants,
    )
    feeds = {n: kit.randn(B, H, S, D) for n in "qkv"} | {"mask": _mask(kit, (B, 1, 1, S))}
    fused = kit.fuse_and_compare(model, ["attention_unguarded"], feeds, trace=True)
    assert fused.result.count == 0
    [miss] = fused.result.near_misses
    assert miss.rule == "EagerToAttention"
    assert "broadcasts along the query axis" in miss.reason
    fused.assert_close(0.0, 0.0)

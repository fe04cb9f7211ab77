"""rotary family: rotate-half RoPE -> RotaryEmbedding (opset 23), full and partial.

Tolerance: rtol 1e-5, atol 1e-5. Inputs have batch 2 while the angles have batch 1 (as
exporters write them), which ONNX Runtime's RotaryEmbedding rejects unless the rewrite expands
the cos/sin caches: the numbers below are computed by ONNX Runtime, so the test covers that.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx.helper as oh
import pytest

RTOL, ATOL = 1e-5, 1e-5
INT64_MAX = np.iinfo(np.int64).max


def _rope(x: str, out: str, half: int, prefix: str = "") -> list[Any]:
    """Llama's apply_rotary_pos_emb for one tensor: x * cos + rotate_half(x) * sin."""
    p = prefix
    return [
        oh.make_node("Slice", [x, "zero", f"half{half}", "axis3", "one"], [f"{p}x1"]),
        oh.make_node("Slice", [x, f"half{half}", "max", "axis3", "one"], [f"{p}x2"]),
        oh.make_node("Neg", [f"{p}x2"], [f"{p}neg"]),
        oh.make_node("Concat", [f"{p}neg", f"{p}x1"], [f"{p}rot"], axis=-1),
        oh.make_node("Mul", [x, "cos4"], [f"{p}xc"]),
        oh.make_node("Mul", [f"{p}rot", "sin4"], [f"{p}rs"]),
        oh.make_node("Add", [f"{p}xc", f"{p}rs"], [out]),
    ]


def _caches() -> list[Any]:
    return [
        oh.make_node("Concat", ["freqs", "freqs"], ["emb"], axis=-1),
        oh.make_node("Cos", ["emb"], ["cos"]),
        oh.make_node("Sin", ["emb"], ["sin"]),
        oh.make_node("Unsqueeze", ["cos", "one"], ["cos4"]),
        oh.make_node("Unsqueeze", ["sin", "one"], ["sin4"]),
    ]


def _constants(*halves: int) -> dict[str, np.ndarray]:
    ints = {"zero": 0, "one": 1, "axis3": 3, "max": INT64_MAX} | {f"half{h}": h for h in halves}
    return {k: np.array([v], np.int64) for k, v in ints.items()}


@pytest.mark.parametrize("freqs_batch", [1, "b"])
def test_rotary_embedding(kit: Any, freqs_batch: int | str) -> None:
    model = kit.make_model(
        [*_caches(), *_rope("x", "y", 4)],
        [("x", ["b", 4, "s", 8]), ("freqs", [freqs_batch, "s", 4])],
        ["y"],
        _constants(4),
    )
    feeds = {"x": kit.randn(2, 4, 5, 8), "freqs": kit.randn(1 if freqs_batch == 1 else 2, 5, 4)}
    fused = kit.fuse_and_compare(model, ["rotary"], feeds)
    assert fused.result.per_rule == {"RotaryEmbedding23": 1}
    counts = kit.op_counts(fused.model)
    assert counts["RotaryEmbedding"] == 1
    assert "Neg" not in counts and "Slice" not in counts
    assert counts["Expand"] == (2 if freqs_batch == 1 else 0)
    fused.assert_close(RTOL, ATOL)


def test_partial_rotary_embedding(kit: Any) -> None:
    """Only the first 8 of 12 features rotate; the rest pass through (GPT-NeoX, Phi)."""
    nodes = [
        *_caches(),
        oh.make_node("Slice", ["x", "zero", "half8", "axis3", "one"], ["x_rot"]),
        oh.make_node("Slice", ["x", "half8", "max", "axis3", "one"], ["x_pass"]),
        *_rope("x_rot", "roped", 4, prefix="r_"),
        oh.make_node("Concat", ["roped", "x_pass"], ["y"], axis=-1),
    ]
    model = kit.make_model(
        nodes, [("x", ["b", 4, "s", 12]), ("freqs", ["b", "s", 4])], ["y"], _constants(4, 8)
    )
    feeds = {"x": kit.randn(2, 4, 5, 12), "freqs": kit.randn(2, 5, 4)}
    fused = kit.fuse_and_compare(model, ["rotary", "rotary_partial"], feeds)
    assert fused.result.count == 1
    assert kit.op_counts(fused.model) == {"RotaryEmbedding": 1, "Cos": 1, "Sin": 1}
    [rope] = [n for n in fused.model.graph if n.op_type == "RotaryEmbedding"]
    assert rope.attributes.get_int("rotary_embedding_dim") == 8
    fused.assert_close(RTOL, ATOL)

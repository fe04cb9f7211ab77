"""Canonicalization: each step counted; folding and cleanup keep ONNX Runtime's numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

from ai_vmm.passes.canonicalize import STEP_NAMES, canonicalize


def _foldable_model() -> onnx.ModelProto:
    """y = x * (c1 + c2) + Identity(x) * (c1 + c2): one foldable Add, one CSE pair, an Identity."""
    c1 = numpy_helper.from_array(np.full((4,), 2.0, np.float32), "c1")
    c2 = numpy_helper.from_array(np.full((4,), 3.0, np.float32), "c2")
    nodes = [
        oh.make_node("Add", ["c1", "c2"], ["c"]),
        oh.make_node("Identity", ["x"], ["xi"]),
        oh.make_node("Mul", ["x", "c"], ["a"]),
        oh.make_node("Mul", ["xi", "c"], ["b"]),
        oh.make_node("Add", ["a", "b"], ["y"]),
        oh.make_node("Neg", ["x"], ["unused"]),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", 1, ["n", 4])],
        [oh.make_tensor_value_info("y", 1, ["n", 4])],
        [c1, c2],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {"x": x})[0]
    return result


def test_steps_fire_and_numbers_stay() -> None:
    proto = _foldable_model()
    model = ir.serde.deserialize_model(proto)
    report = canonicalize(model)
    counts = dict(report.node_counts)
    assert counts["input"] == 6
    assert counts["remove_unused"] == 5
    assert counts["identity_elimination"] == 4
    assert counts["constant_folding"] == 3
    assert counts["common_subexpression_elimination"] == 2
    assert report.modified["constant_folding"] and report.modified["shape_inference"] is not None
    assert [op for op, _ in report.node_counts] == ["input", *STEP_NAMES[:-1]]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(ir.serde.serialize_model(model), x), _run(proto, x), rtol=1e-6)


def test_disabled_steps_are_skipped_and_reported() -> None:
    model = ir.serde.deserialize_model(_foldable_model())
    report = canonicalize(model, frozenset({"constant_folding", "shape_inference"}))
    assert report.skipped == {
        "constant_folding": "disabled by option",
        "shape_inference": "disabled by option",
    }
    assert "constant_folding" not in dict(report.node_counts)

"""The OpenVINO LM target's graph rewrites on tiny graphs: what fired, and the same numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from openvino import opset13 as ops  # noqa: E402

from ai_vmm.targets import openvino_lm  # noqa: E402


def _tied_model() -> Any:
    """``x @ W`` on an ``[in, out]`` constant, then a head on ``Transpose(embedding)`` (tied)."""
    rng = np.random.default_rng(0)
    x = ops.parameter([-1, -1, 8], np.float32, name="x")
    hidden = ops.matmul(
        x, ops.constant(rng.standard_normal((8, 8)).astype(np.float32)), False, False
    )
    table = ops.constant(rng.standard_normal((16, 8)).astype(np.float32))
    head = ops.matmul(hidden, ops.transpose(table, ops.constant(np.array([1, 0]))), False, False)
    lookup = ops.gather(table, ops.constant(np.array([3, 5])), ops.constant(np.int64(0)))
    return ov.Model([head, lookup], [x])


def _run(model: Any, x: np.ndarray) -> list[np.ndarray]:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(x)
    return [np.asarray(result[out]) for out in compiled.outputs]


def test_weights_output_major_fires_and_keeps_numbers() -> None:
    model = _tied_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 8)).astype(np.float32)
    before = _run(model, x)
    openvino_lm._weights_output_major(model)
    matmuls = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    assert [op.get_attributes()["transpose_b"] for op in matmuls] == [True, True]
    assert not [op for op in model.get_ordered_ops() if op.get_type_name() == "Transpose"]
    constants = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]
    assert sum(1 for c in constants if list(c.get_output_shape(0)) == [16, 8]) == 1  # still tied
    for a, b in zip(before, _run(model, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_layer_precisions_names_the_storage_type() -> None:
    pytest.importorskip("nncf")
    model = _tied_model()
    openvino_lm._weights_output_major(model)
    compressed = openvino_lm.compress(model, openvino_lm.WeightCompression("int8"))
    found = openvino_lm.layer_precisions(compressed)
    assert found and set(found.values()) == {"i8"}

"""NNCF on OpenVINO models: shared weights switch SmoothQuant off; reporting of quantized ops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
from onnx import numpy_helper

from ai_vmm.targets.base import QuantizationRequest
from ai_vmm.targets.openvino_quant import map_ignored, quantize_model, shared_weight_ops


def _shared_weight_model(path: Path) -> Path:
    """x[batch,64] -> MatMul(W) -> Relu -> MatMul(W) -> y: one weight read by two matmuls."""
    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32) / 8
    graph = oh.make_graph(
        [
            oh.make_node("MatMul", ["x", "W"], ["h"], name="first"),
            oh.make_node("Relu", ["h"], ["r"], name="relu"),
            oh.make_node("MatMul", ["r", "W"], ["y"], name="second"),
        ],
        "shared",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 64])],
        [numpy_helper.from_array(weight, "W")],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def test_shared_weight_turns_smoothquant_off(tmp_path: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(_shared_weight_model(tmp_path / "shared.onnx")))
    assert shared_weight_ops(model)
    rng = np.random.default_rng(1)
    samples = tuple({"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(8))
    request = QuantizationRequest(activations="int8", transformer=True, calibration=samples)
    result = quantize_model(model, request)
    assert any("SmoothQuant off" in note for note in result.notes)
    assert "TRANSFORMER" in result.method


def test_ignored_onnx_names_reach_decomposed_ops(tmp_path: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(_shared_weight_model(tmp_path / "shared.onnx")))
    # OpenVINO names the op producing the graph output "y" after the output, not "second".
    found = map_ignored(model, (("first", "a"), ("y", "b"), ("absent", "c")))
    assert found == {"first": "a", "y": "b"}

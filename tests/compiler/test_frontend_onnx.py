"""ONNX frontend: external data, ModelProto input, old opsets, initializers listed as inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

import ai_vmm
from ai_vmm.frontends.onnx import load_onnx
from ai_vmm.runtime import ModelLoadError, load
from tests_support import make_mlp_model


def test_external_data_is_hashed_and_loaded(tmp_path: Path) -> None:
    model = make_mlp_model()
    onnx.save(
        model,
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    loaded = load_onnx(tmp_path / "ext.onnx")
    weights = loaded.model.graph.initializers["W"].const_value
    assert weights is not None and weights.numpy().shape == (16, 8)
    result = ai_vmm.compile(tmp_path / "ext.onnx", "openvino:CPU", tmp_path / "e.vmm", tune=False)
    assert result.report["verification"]["passed"] is True
    (tmp_path / "ext.onnx.data").write_bytes(b"\0" * 8)
    assert load_onnx(tmp_path / "ext.onnx").sha256 != loaded.sha256
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="external data file ext.onnx.data is missing"):
        load_onnx(tmp_path / "ext.onnx")


def test_old_opset_is_upgraded(tmp_path: Path) -> None:
    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])],
        "old",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
    )
    old = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 6)])
    loaded = load_onnx(old)
    assert loaded.model.opset_imports[""] == 13
    assert loaded.notes == ["opset 6 converted to 13"]


def test_initializers_listed_as_inputs_become_weights(tmp_path: Path) -> None:
    model = make_mlp_model()
    model.graph.input.extend([oh.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [16, 8])])
    onnx.save(model, tmp_path / "m.onnx")
    result = ai_vmm.compile(tmp_path / "m.onnx", "onnxruntime:CPU", tmp_path / "m.vmm", tune=False)
    assert [spec["name"] for spec in result.manifest["inputs"]] == ["x"]
    assert load(result.path)(x=np.ones((1, 16), np.float32))["y"].shape == (1, 8)


def test_checker_failure_is_a_load_error() -> None:
    model = make_mlp_model()
    model.graph.node[0].input[0] = "undefined_tensor"
    with pytest.raises(ModelLoadError, match="fails the ONNX checker"):
        load_onnx(model)


def test_ir_model_keeps_dynamic_dims(mlp_path: Path) -> None:
    loaded = load_onnx(mlp_path)
    shape = loaded.model.graph.inputs[0].shape
    assert shape is not None and isinstance(shape[0], ir.SymbolicDim) and shape[0].value == "batch"

"""Helpers shared by tests in several folders (put on sys.path by tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnx.helper as oh
from onnx import numpy_helper


def make_mlp_model(opset: int = 17, domain_node: bool = False) -> onnx.ModelProto:
    """x[batch,16] -> MatMul -> Add -> Relu (-> a node of an unknown domain) -> y[batch,8]."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    nodes = [
        oh.make_node("MatMul", ["x", "W"], ["m"], name="matmul"),
        oh.make_node("Add", ["m", "B"], ["a"], name="add"),
        oh.make_node("Relu", ["a"], ["r" if domain_node else "y"], name="relu"),
    ]
    opsets = [oh.make_opsetid("", opset)]
    if domain_node:
        nodes.append(oh.make_node("Mystery", ["r"], ["y"], name="mystery", domain="com.example"))
        opsets.append(oh.make_opsetid("com.example", 1))
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])],
        [weights, bias],
    )
    return oh.make_model(graph, opset_imports=opsets)


def make_two_input_model() -> onnx.ModelProto:
    """ids[batch,seq] int64 and mask[batch,seq] float32 -> Gather rows * mask -> y."""
    rng = np.random.default_rng(1)
    table = numpy_helper.from_array(rng.standard_normal((50, 4)).astype(np.float32), "table")
    nodes = [
        oh.make_node("Gather", ["table", "ids"], ["emb"], name="gather"),
        oh.make_node("Unsqueeze", ["mask", "axes"], ["mask3"], name="unsqueeze"),
        oh.make_node("Mul", ["emb", "mask3"], ["y"], name="mul"),
    ]
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    graph = oh.make_graph(
        nodes,
        "two_inputs",
        [
            oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", "seq"]),
            oh.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, ["batch", "seq"]),
        ],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "seq", 4])],
        [table, axes],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def load_module(path: Path, name: str) -> ModuleType:
    """Import a file that is not in an installed package (``models/``, ``scripts/``) as ``name``
    (``ai_vmm.bench_suite.load_module``: registered in ``sys.modules``, imported once)."""
    from ai_vmm.bench_suite import load_module as load

    return load(path, name)


def fetched_realmodels() -> ModuleType:
    """``models/realmodels.py`` with its cache filled (the test is skipped, saying why, when the
    package index cannot be reached)."""
    import pytest

    repo = Path(__file__).resolve().parents[2]
    module = load_module(repo / "models" / "realmodels.py", "ai_vmm_models_realmodels")
    try:
        module.fetch()
    except module.IndexUnreachable as exc:
        pytest.skip(f"package index unreachable: {exc}")
    return module

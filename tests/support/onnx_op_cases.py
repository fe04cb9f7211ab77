"""Tiny ONNX graphs for op-by-op checks of the ONNX -> torch conversion against ONNX Runtime."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

F32 = onnx.TensorProto.FLOAT
I64 = onnx.TensorProto.INT64


def model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto] = (),  # type: ignore[assignment]
    opset: int = 23,
) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def vi(name: str, shape: list[Any] | None, dtype: int = F32) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, shape)


def const(name: str, values: Any, dtype: Any = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def run_both(
    proto: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """ONNX Runtime's outputs and the converted module's (eager, on the CPU)."""
    import torch

    from ai_vmm.targets.cuda_convert import to_torch

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    module = to_torch(ir.serde.deserialize_model(proto)).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[n]) for n in module.input_names])
    return expected, [g.numpy() for g in got]


def assert_matches(
    proto: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    expected, got = run_both(proto, feeds)
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape
        np.testing.assert_allclose(have, want, rtol=rtol, atol=atol)

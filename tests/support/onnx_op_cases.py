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
BOOL = onnx.TensorProto.BOOL


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


def running_sum_loop(
    stop_at: int | None = None,
    trip_from_data: bool = False,
    batch: int | str = "N",
    tf_condition: bool = False,
    stride: int = 1,
) -> onnx.ModelProto:
    """For t in range(T): state = tanh(state @ w + x[t]); emits state each step. T is x's
    first axis (Shape -> Gather), as Keras' LSTM loop reads it; the weight passes through the
    body unchanged (TF style), and the step reads x at (i + 1) - 1 with an outer constant 1 (TF
    counts that way). ``stop_at``: the body's condition turns false after that step.
    ``batch``: the size (or symbol) of N. ``tf_condition``: the condition is TF's
    ``float(i) < float(trip)``, the outer trip count read as data in the body. ``stride``:
    the loop reads every ``stride``-th row of x, ``(T - 1) // stride + 1`` steps (a trip count
    that is an expression of the input's size, as a strided RNN's)."""
    condition = (
        [oh.make_node("Less", ["i", "stop"], ["cond_out"])]
        if stop_at is not None
        else [oh.make_node("Identity", ["cond_in"], ["cond_out"])]
    )
    if tf_condition:
        condition = [
            oh.make_node("Cast", ["i"], ["i_f"], to=onnx.TensorProto.FLOAT),
            oh.make_node("Cast", ["trip"], ["trip_f"], to=onnx.TensorProto.FLOAT),
            oh.make_node("Less", ["i_f", "trip_f"], ["cond_out"]),
        ]
    body = oh.make_graph(
        [
            *condition,
            oh.make_node("Add", ["i", "one"], ["i_next"]),
            oh.make_node("Sub", ["i_next", "one"], ["i_back"]),
            oh.make_node("Mul", ["i_back", "stride"], ["row"]),
            oh.make_node("Gather", ["x", "row"], ["xt"], axis=0),
            oh.make_node("MatMul", ["state", "w_in"], ["mixed"]),
            oh.make_node("Add", ["mixed", "xt"], ["pre"]),
            oh.make_node("Tanh", ["pre"], ["state_out"]),
            oh.make_node("Identity", ["state_out"], ["emitted"]),
        ],
        "body",
        [
            vi("i", [], I64),
            vi("cond_in", [], onnx.TensorProto.BOOL),
            vi("state", None),
            vi("w_in", None),
        ],
        [
            vi("cond_out", [], onnx.TensorProto.BOOL),
            vi("state_out", None),
            vi("w_in", None),
            vi("emitted", None),
        ],
        [const("stop", stop_at if stop_at is not None else 0)],
    )
    if trip_from_data:
        trip = [oh.make_node("ReduceMax", ["steps"], ["trip"], keepdims=0)]
        inputs = [vi("x", ["T", batch, 4]), vi("state0", [batch, 4]), vi("steps", [1], I64)]
    else:
        trip = [
            oh.make_node("Shape", ["x"], ["shape"]),
            oh.make_node("Gather", ["shape", "zero"], ["rows" if stride > 1 else "trip"], axis=0),
        ]
        if stride > 1:
            trip += [
                oh.make_node("Sub", ["rows", "one"], ["rows_less"]),
                oh.make_node("Div", ["rows_less", "stride"], ["strides"]),
                oh.make_node("Add", ["strides", "one"], ["trip"]),
            ]
        inputs = [vi("x", ["T", batch, 4]), vi("state0", [batch, 4])]
    nodes = [
        *trip,
        oh.make_node(
            "Loop", ["trip", "true", "state0", "w"], ["final", "w_out", "states"], body=body
        ),
    ]
    inits = [
        const("zero", 0),
        const("one", 1),
        const("stride", stride),
        const("true", True, np.bool_),
        const("w", np.random.default_rng(5).standard_normal((4, 4)) * 0.5, np.float32),
    ]
    return model(nodes, inputs, [vi("final", None), vi("states", None)], inits)

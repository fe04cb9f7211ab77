"""Small ONNX models for the cuda target's build tests (tests/targets/test_cuda_build.py,
test_cuda_padding.py)."""

from __future__ import annotations

from pathlib import Path


def two_inputs(path: Path) -> Path:
    """y = x * 2 + float(ids): a float and an int64 input sharing the dims (batch, seq)."""
    import onnx
    import onnx.helper as oh

    graph = oh.make_graph(
        [
            oh.make_node("Cast", ["ids"], ["f"], to=onnx.TensorProto.FLOAT),
            oh.make_node("Add", ["x", "x"], ["x2"]),
            oh.make_node("Add", ["x2", "f"], ["y"]),
        ],
        "two",
        [
            oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "seq"]),
            oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", "seq"]),
        ],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "seq"])],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def stateful(path: Path) -> Path:
    """Silero VAD's streaming shape: ``x`` [batch, seq], ``state`` [2, batch, 4] (the batch is
    axis 1), ``sr`` a scalar; ``y = x + sum(state over 0 and 2)``, ``new_state = 2 * state +
    sr``. Rows do not mix."""
    import onnx
    import onnx.helper as oh

    axes0, axes1 = (
        oh.make_tensor("a0", onnx.TensorProto.INT64, [1], [0]),
        oh.make_tensor("a1", onnx.TensorProto.INT64, [1], [1]),
    )
    graph = oh.make_graph(
        [
            oh.make_node("ReduceSum", ["state", "a0"], ["s"], keepdims=0),
            oh.make_node("ReduceSum", ["s", "a1"], ["s1"], keepdims=1),
            oh.make_node("Add", ["x", "s1"], ["y"]),
            oh.make_node("Cast", ["sr"], ["srf"], to=onnx.TensorProto.FLOAT),
            oh.make_node("Add", ["state", "state"], ["s2"]),
            oh.make_node("Add", ["s2", "srf"], ["new_state"]),
        ],
        "stateful",
        [
            oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "seq"]),
            oh.make_tensor_value_info("state", onnx.TensorProto.FLOAT, [2, "batch", 4]),
            oh.make_tensor_value_info("sr", onnx.TensorProto.INT64, []),
        ],
        [
            oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "seq"]),
            oh.make_tensor_value_info("new_state", onnx.TensorProto.FLOAT, [2, "batch", 4]),
        ],
        initializer=[axes0, axes1],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path

"""A conv net with MaxUnpool in the middle: ONNX Runtime runs every node, OpenVINO not MaxUnpool."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from onnx import numpy_helper


def make_unpool_model() -> onnx.ModelProto:
    """x[N,3,16,16] -> Conv+Relu -> MaxPool(indices) -> MaxUnpool -> Conv -> Relu -> y."""
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.3, "w2")
    nodes = [
        oh.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        oh.make_node(
            "MaxPool", ["r1"], ["p", "idx"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        oh.make_node(
            "MaxUnpool", ["p", "idx"], ["u"], name="unpool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        oh.make_node("Conv", ["u", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c2"], ["y"], name="relu2"),
    ]
    graph = oh.make_graph(
        nodes,
        "unpool_net",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 16, 16])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 16, 16])],
        [w1, w2],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])

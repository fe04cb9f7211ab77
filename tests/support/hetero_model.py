"""A conv net with DepthToSpace in the middle: OpenVINO runs every node, the cuda target's torch
mapping not DepthToSpace, so a GPU + OpenVINO plan splits it GPU | OpenVINO | GPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from onnx import numpy_helper


def make_depth_to_space_model(channels: int = 32, size: int = 32) -> onnx.ModelProto:
    """x[N,3,S,S] -> Conv+Relu -> Conv+Relu -> DepthToSpace(2) -> Gelu -> Conv+Relu -> y[N,8,2S,2S].

    The Gelu is ``com.microsoft``'s (ONNX Runtime's and OpenVINO's contrib op), which the cuda
    target does not convert: a plan over cuda and OpenVINO has to split there. (The split was at
    the DepthToSpace until the cuda converter mapped it.)
    """
    rng = np.random.default_rng(11)

    def weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:]))
        data = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return numpy_helper.from_array(data, name)

    inits = [
        weight("w1", (channels, 3, 3, 3)),
        weight("w2", (4 * channels, channels, 3, 3)),
        weight("w3", (8, channels, 3, 3)),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        oh.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        oh.make_node("DepthToSpace", ["r2"], ["d"], name="d2s", blocksize=2, mode="DCR"),
        oh.make_node("Gelu", ["d"], ["g"], name="gelu", domain="com.microsoft"),
        oh.make_node("Conv", ["g", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c3"], ["y"], name="relu3"),
    ]
    graph = oh.make_graph(
        nodes,
        "d2s_net",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, size, size])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 2 * size, 2 * size])],
        inits,
    )
    # IR version 10: older ONNX Runtime releases (1.30) refuse the newest IR version.
    opsets = [oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)]
    return oh.make_model(graph, opset_imports=opsets, ir_version=10)

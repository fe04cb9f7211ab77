"""Small ONNX models with the shape constraints of real exports (issue 12's failure classes).

- ``detector_model``: five stride-2 convolutions (stride 32), the last map upsampled and
  concatenated with the stride-16 map, as YOLO/PP-OCR det necks do: H and W must be multiples
  of 32, and 16 (the old default for every dynamic axis) fails in the Concat.
- ``recognizer_model``: a CRNN-style head: the height is pooled to exactly one row and squeezed,
  which only works at height 48 (the width stays free), as PP-OCR rec models need.
- ``minus_one_model``: dimensions written as -1, as some exporters write "dynamic".
- ``index_model``: a Gather whose indices are a graph input over a dynamic table.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh

_RNG = np.random.default_rng(7)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return onh.from_array((_RNG.standard_normal(shape) * 0.2).astype(np.float32), name)


def _conv(x: str, out: str, cin: int, cout: int, stride: int) -> tuple[onnx.NodeProto, list]:
    w = _weight(f"{out}_w", cout, cin, 3, 3)
    node = oh.make_node(
        "Conv", [x, w.name], [out], strides=[stride, stride], pads=[1, 1, 1, 1], name=out
    )
    return node, [w]


def _model(nodes: list, inits: list, inputs: list, outputs: list) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def detector_model() -> onnx.ModelProto:
    nodes, inits = [], []
    x, c = "images", 3
    for i, cout in enumerate((8, 8, 16, 16, 16)):
        node, weights = _conv(x, f"s{i}", c, cout, 2)
        relu = oh.make_node("Relu", [f"s{i}"], [f"r{i}"], name=f"relu{i}")
        nodes += [node, relu]
        inits += weights
        x, c = f"r{i}", cout
    scales = onh.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    inits.append(scales)
    nodes.append(oh.make_node("Resize", ["r4", "", "scales"], ["up"], mode="nearest", name="up"))
    nodes.append(oh.make_node("Concat", ["up", "r3"], ["cat"], axis=1, name="cat"))
    head, weights = _conv("cat", "head", 32, 4, 1)
    nodes.append(head)
    inits += weights
    image = oh.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 3, "h", "w"])
    out = oh.make_tensor_value_info("head", onnx.TensorProto.FLOAT, [None] * 4)
    return _model(nodes, inits, [image], [out])


def recognizer_model() -> onnx.ModelProto:
    nodes, inits = [], []
    x, c = "x", 3
    for i, cout in enumerate((8, 16, 16, 16)):
        node, weights = _conv(x, f"s{i}", c, cout, 2)
        nodes.append(node)
        inits += weights
        x, c = f"s{i}", cout
    # Height 48 -> 3 after four stride-2 convolutions; a 3x1 pool makes it 1, squeezed away.
    nodes.append(oh.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 1], name="pool"))
    axes = onh.from_array(np.array([2], np.int64), "axes")
    inits.append(axes)
    nodes.append(oh.make_node("Squeeze", ["pool", "axes"], ["seq"], name="squeeze"))
    nodes.append(oh.make_node("Transpose", ["seq"], ["tokens"], perm=[0, 2, 1], name="tr"))
    proj = onh.from_array(_RNG.standard_normal((16, 12)).astype(np.float32), "proj")
    inits.append(proj)
    nodes.append(oh.make_node("MatMul", ["tokens", "proj"], ["logits"], name="proj_mm"))
    image = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 3, "height", "width"])
    out = oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [None] * 3)
    return _model(nodes, inits, [image], [out])


def minus_one_model() -> onnx.ModelProto:
    node, weights = _conv("x", "y", 3, 4, 1)
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 3, -1, -1])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 4, -1, -1])
    return _model([node], weights, [x], [y])


def index_model(rows: int = 5) -> onnx.ModelProto:
    """``table[indices]`` with the table a weight of ``rows`` rows: indices 0..rows-1 only."""
    table = onh.from_array(_RNG.standard_normal((rows, 8)).astype(np.float32), "table")
    gather = oh.make_node("Gather", ["table", "indices"], ["rows"], axis=0, name="gather")
    relu = oh.make_node("Relu", ["rows"], ["out"], name="relu")
    ids = oh.make_tensor_value_info("indices", onnx.TensorProto.INT64, ["batch", "n"])
    out = oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [None] * 3)
    return _model([gather, relu], [table], [ids], [out])


def scatter_model() -> onnx.ModelProto:
    """``ScatterElements(data, indices, updates)``: indices must lie in ``[0, 4)`` on axis 0."""
    node = oh.make_node("ScatterElements", ["data", "indices", "updates"], ["s"], axis=0, name="sc")
    relu = oh.make_node("Relu", ["s"], ["out"], name="relu")
    data = oh.make_tensor_value_info("data", onnx.TensorProto.FLOAT, [4, 6])
    ids = oh.make_tensor_value_info("indices", onnx.TensorProto.INT64, [2, 6])
    upd = oh.make_tensor_value_info("updates", onnx.TensorProto.FLOAT, [2, 6])
    out = oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [4, 6])
    return _model([node, relu], [], [data, ids, upd], [out])


def roi_align_model() -> onnx.ModelProto:
    """``RoiAlign`` of 3 boxes on a dynamic batch of images: ``batch_indices`` must lie in
    ``[0, batch)`` (OpenVINO refuses others: "Demanded batch (id = 6) doesn't exist")."""
    node = oh.make_node(
        "RoiAlign", ["x", "rois", "batch_indices"], ["y"], output_height=3, output_width=3,
        sampling_ratio=2, name="roi",
    )  # fmt: skip
    relu = oh.make_node("Relu", ["y"], ["out"], name="relu")
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 2, 10, 10])
    rois = oh.make_tensor_value_info("rois", onnx.TensorProto.FLOAT, [3, 4])
    ids = oh.make_tensor_value_info("batch_indices", onnx.TensorProto.INT64, [3])
    out = oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [3, 2, 3, 3])
    return _model([node, relu], [], [x, rois, ids], [out])


def unknowable_model() -> onnx.ModelProto:
    """A reshape to a shape given as an input: no synthetic input can know a valid one."""
    node = oh.make_node("Reshape", ["x", "shape"], ["r"], name="reshape")
    relu = oh.make_node("Relu", ["r"], ["out"], name="relu")
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [6, 35])
    shape = oh.make_tensor_value_info("shape", onnx.TensorProto.INT64, [2])
    out = oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [None, None])
    return _model([node, relu], [], [x, shape], [out])

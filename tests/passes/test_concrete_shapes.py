"""The sizes of symbolic dims: given ones win, the rest follow the documented ladder (batch 1,
sequence 128, spatial 224), and the profile says which was which."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from ai_vmm.passes.analyze import analyze
from ai_vmm.passes.concrete_shapes import (
    BATCH_SIZE,
    SEQUENCE_SIZE,
    SPATIAL_SIZE,
    default_roles,
    dims_from_shapes,
    resolve_dims,
)
from ai_vmm.runtime.errors import InputError

FLOAT, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def _inputs(*specs: tuple[str, int, list[int | str | None]]) -> list[ir.Value]:
    graph = oh.make_graph(
        [],
        "g",
        [oh.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in specs],
        [],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])
    return list(ir.serde.deserialize_model(model).graph.inputs)


def _image_cnn() -> ir.Model:
    """A 3x3 conv on an image of dynamic batch, height and width."""
    graph = oh.make_graph(
        [oh.make_node("Conv", ["image", "w"], ["y"], pads=[1, 1, 1, 1])],
        "cnn",
        [oh.make_tensor_value_info("image", FLOAT, ["N", 3, "H", "W"])],
        [oh.make_tensor_value_info("y", FLOAT, None)],
        [numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")],
    )
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)]))


def test_ladder_roles_of_text_image_and_cache_inputs() -> None:
    inputs = _inputs(
        ("input_ids", INT64, ["batch_size", "sequence_length"]),
        ("pixel_values", FLOAT, ["batch_size", 3, "height", "width"]),
        ("past_key", FLOAT, ["batch_size", 4, "past_sequence_length", 16]),
        ("frames", FLOAT, ["batch_size", None, 80]),
    )
    assert default_roles(inputs) == {
        "batch_size": "batch",
        "sequence_length": "sequence",
        "height": "spatial",
        "width": "spatial",
        "past_sequence_length": "sequence",
        "frames[1]": "sequence",
    }


def test_first_axes_share_the_batch_without_a_batch_name() -> None:
    # Two feature inputs exported with a separate unknown dim each (tf2onnx's unk__N): both
    # are the batch, or a Concat of the two would not line up at the defaults.
    inputs = _inputs(("a", FLOAT, ["unk__1", 21]), ("b", FLOAT, ["unk__2", 21]))
    assert default_roles(inputs) == {"unk__1": "batch", "unk__2": "batch"}
    # An unnamed first axis is a batch; a first axis named like a sequence is not.
    inputs = _inputs(("x", FLOAT, [None, "T", 4]), ("h", FLOAT, ["seq_len", 8]))
    assert default_roles(inputs) == {"x[0]": "batch", "T": "sequence", "seq_len": "sequence"}


def test_given_dims_win_and_are_recorded() -> None:
    inputs = _inputs(("input_ids", INT64, ["batch", "sequence"]))
    sizes = resolve_dims(inputs, {"sequence": 384, "unknown_name": 7})
    assert sizes.sizes == {"batch": BATCH_SIZE, "sequence": 384}
    assert sizes.sources == {"batch": "batch", "sequence": "given"}
    assert sizes.note() == "symbolic dims: given sequence=384; assumed batch=1 (batch)"


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_a_bad_size_is_a_clear_error(bad: object) -> None:
    inputs = _inputs(("x", FLOAT, ["batch", 4]))
    with pytest.raises(InputError, match="dimension 'batch' must be a positive integer"):
        resolve_dims(inputs, {"batch": bad})  # type: ignore[dict-item]


def test_dims_from_sample_shapes() -> None:
    inputs = _inputs(
        ("input_ids", INT64, ["batch", "sequence"]),
        ("mask", INT64, ["batch", None]),
        ("fixed", FLOAT, [2, 3]),
    )
    shapes = {"input_ids": (4, 77), "mask": (4, 77), "fixed": (2, 3), "extra": (1,)}
    assert dims_from_shapes(inputs, shapes) == {"batch": 4, "sequence": 77, "mask[1]": 77}


def test_image_model_defaults_to_224_and_takes_given_sizes() -> None:
    model = _image_cnn()
    per_pixel = 2 * 8 * 3 * 3 * 3  # a multiply-add per weight, per output pixel
    profile = analyze(model)
    assert profile.assumed_dims == {"N": 1, "H": SPATIAL_SIZE, "W": SPATIAL_SIZE}
    assert profile.dim_sources == {"N": "batch", "H": "spatial", "W": "spatial"}
    assert profile.flops == {"conv": per_pixel * SPATIAL_SIZE * SPATIAL_SIZE}
    profile = analyze(model, {"N": 4, "H": 320, "W": 640})
    assert profile.flops == {"conv": per_pixel * 4 * 320 * 640}
    assert set(profile.dim_sources.values()) == {"given"}
    record = profile.to_json()
    assert record["primary_label"] == "cnn"
    assert record["assumed_dims"] == {"N": 4, "H": 320, "W": 640}
    assert record["shape_note"] == "symbolic dims: given N=4, H=320, W=640"
    # The model itself keeps its symbolic dims.
    assert str(model.graph.inputs[0].shape) == "[N,3,H,W]"


def test_default_sequence_size() -> None:
    inputs = _inputs(("input_ids", INT64, ["batch", "seq"]))
    assert resolve_dims(inputs).sizes == {"batch": BATCH_SIZE, "seq": SEQUENCE_SIZE}

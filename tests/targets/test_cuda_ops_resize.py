"""Resize/Upsample converted to torch, against ONNX Runtime: every mode, coordinate mapping and
nearest rounding the op function claims, up and down, from scales and from sizes."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx.helper as oh
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from onnx_op_cases import assert_matches, const, model, vi  # noqa: E402

from ai_vmm.targets.cuda_convert import node_support, to_torch  # noqa: E402

RNG = np.random.default_rng(3)
X = RNG.standard_normal((2, 3, 5, 7)).astype(np.float32)
TRANSFORMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
ROUNDING = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def _resize(
    attrs: dict[str, Any],
    scales: list[float] | None = None,
    sizes: list[int] | None = None,
    opset: int = 19,
) -> Any:
    inits = []
    names = ["x", ""]
    if scales is not None:
        inits.append(const("scales", scales, np.float32))
        names.append("scales")
    else:
        names.append("")
        assert sizes is not None
        inits.append(const("sizes", sizes))
        names.append("sizes")
    node = oh.make_node("Resize", names, ["y"], **attrs)
    return model([node], [vi("x", ["N", 3, "H", "W"])], [vi("y", None)], inits, opset=opset)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("rounding", ROUNDING)
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 0.6, 1.5], [1, 1, 3, 0.5]])
def test_nearest(transform: str, rounding: str, scales: list[float]) -> None:
    attrs = {"mode": "nearest", "coordinate_transformation_mode": transform}
    attrs["nearest_mode"] = rounding
    assert_matches(_resize(attrs, scales=scales), {"x": X})


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("transform", [*TRANSFORMS, "half_pixel_symmetric"])
@pytest.mark.parametrize("target", [[2, 3, 10, 14], [2, 3, 3, 11], [2, 3, 1, 4]])
def test_linear_and_cubic_from_sizes(mode: str, transform: str, target: list[int]) -> None:
    attrs = {"mode": mode, "coordinate_transformation_mode": transform}
    assert_matches(_resize(attrs, sizes=target), {"x": X})


@pytest.mark.parametrize("exclude", [0, 1])
@pytest.mark.parametrize("a", [-0.75, -0.5])
def test_cubic_coefficient_and_exclude_outside(exclude: int, a: float) -> None:
    attrs = {"mode": "cubic", "cubic_coeff_a": a, "exclude_outside": exclude}
    assert_matches(_resize(attrs, scales=[1, 1, 1.7, 0.8]), {"x": X})


def test_axes_attribute_and_batch_resized() -> None:
    """Opset 18's ``axes``: the scales name only those axes (here the batch too; ONNX Runtime
    resizes a batch only in nearest mode)."""
    node = oh.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", axes=[0, 3])
    proto = model(
        [node],
        [vi("x", ["N", 3, "H", "W"])],
        [vi("y", None)],
        [const("scales", [2.0, 0.5], np.float32)],
        opset=19,
    )
    assert_matches(proto, {"x": X})


def test_sizes_from_shapes_export_with_symbolic_sizes() -> None:
    """A YOLO/DB-style neck: the upsampled map takes the size of another map (Shape ->
    Slice -> Concat), so the export stays dynamic in H and W."""
    nodes = [
        oh.make_node("Shape", ["skip"], ["s"]),
        oh.make_node("Slice", ["s", "two", "four"], ["hw"]),
        oh.make_node("Shape", ["x"], ["sx"]),
        oh.make_node("Slice", ["sx", "zero", "two"], ["nc"]),
        oh.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        oh.make_node(
            "Resize",
            ["x", "", "", "sizes"],
            ["up"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        oh.make_node("Add", ["up", "skip"], ["y"]),
    ]
    proto = model(
        nodes,
        [vi("x", ["N", 3, "h", "w"]), vi("skip", ["N", 3, "H", "W"])],
        [vi("y", None)],
        [const("zero", [0]), const("two", [2]), const("four", [4])],
        opset=13,
    )
    feeds = {"x": X, "skip": RNG.standard_normal((2, 3, 10, 14)).astype(np.float32)}
    assert_matches(proto, feeds)
    module = to_torch(ir.serde.deserialize_model(proto)).eval()
    h, w = torch.export.Dim("h", min=2, max=64), torch.export.Dim("w", min=2, max=64)
    program = torch.export.export(
        module,
        (torch.zeros(1, 3, 4, 6), torch.zeros(1, 3, 8, 12)),
        dynamic_shapes={"x": {2: h, 3: w}, "skip": {2: 2 * h, 3: 2 * w}},
        strict=False,
    )
    x, skip = torch.randn(1, 3, 7, 9), torch.randn(1, 3, 14, 18)
    np.testing.assert_allclose(
        program.module()(x, skip)[0].numpy(), module(x, skip)[0].numpy(), rtol=0, atol=0
    )


def test_whole_scales_keep_symbolic_sizes_plain() -> None:
    """Scales [1, 1, 2, 2] on a dynamic batch and image: the export's output sizes are the
    batch itself and 2 * H, 2 * W (floor(1.0 * batch) was not the batch to torch.export, and
    the cuda target's batch padding then refused NudeNet on the H200)."""
    attrs = {"mode": "nearest"}
    module = to_torch(ir.serde.deserialize_model(_resize(attrs, scales=[1, 1, 2, 2]))).eval()
    dims = {
        0: torch.export.Dim("n", min=1, max=8),
        2: torch.export.Dim("h", min=2, max=64),
        3: torch.export.Dim("w", min=2, max=64),
    }
    program = torch.export.export(
        module, (torch.zeros(2, 3, 4, 6),), dynamic_shapes=(dims,), strict=False
    )
    (given,) = (n for n in program.graph.nodes if n.op == "placeholder" and n.name == "x")
    output = next(n for n in program.graph.nodes if n.op == "output").args[0][0]
    n_in, h_in = given.meta["val"].shape[0], given.meta["val"].shape[2]
    n_out, h_out = output.meta["val"].shape[0], output.meta["val"].shape[2]
    assert str(n_out) == str(n_in)
    assert str(h_out) == str(2 * h_in)


@pytest.mark.parametrize("opset", [10, 11])
def test_older_opsets_and_upsample(opset: int) -> None:
    """Resize-10 (X, scales) maps asymmetric and floors; Upsample-9 is the same op."""
    inits = [const("scales", [1, 1, 2, 3], np.float32)]
    resize = oh.make_node("Resize", ["x", "scales"], ["y"], mode="nearest")
    upsample = oh.make_node("Upsample", ["x", "scales"], ["z"], mode="linear")
    if opset == 10:
        proto = model([resize], [vi("x", ["N", 3, "H", "W"])], [vi("y", None)], inits, opset=10)
    else:
        proto = model([upsample], [vi("x", ["N", 3, "H", "W"])], [vi("z", None)], inits, opset=9)
    assert_matches(proto, {"x": X})


def test_unsupported_resize_says_why() -> None:
    crop = oh.make_node(
        "Resize", ["x", "roi", "scales"], ["y"], coordinate_transformation_mode="tf_crop_and_resize"
    )
    data_scales = oh.make_node("Resize", ["x", "", "s"], ["z"])
    proto = model(
        [crop, data_scales],
        [vi("x", [1, 3, 4, 4]), vi("s", [4])],
        [vi("y", None), vi("z", None)],
        [
            const("roi", [0, 0, 0, 0, 1, 1, 1, 1], np.float32),
            const("scales", [1, 1, 2, 2], np.float32),
        ],
        opset=19,
    )
    reasons = [node_support(n, 19) for n in ir.serde.deserialize_model(proto).graph]
    assert reasons[0] is not None and "tf_crop_and_resize" in reasons[0]
    assert reasons[1] is not None and "scales computed from data" in reasons[1]

"""Pooling with ``auto_pad`` SAME and Softmax before opset 13, converted to torch, against ONNX
Runtime (the rest of the nn ops are in test_cuda_convert.py's table)."""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from onnx_op_cases import assert_matches, model, vi  # noqa: E402

from ai_vmm.targets.cuda_convert import to_torch  # noqa: E402

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize(("kernel", "stride"), [(2, 1), (3, 1), (3, 2), (2, 2)])
@pytest.mark.parametrize("size", [7, 8])
def test_pool_auto_pad_same(op: str, auto_pad: str, kernel: int, stride: int, size: int) -> None:
    node = oh.make_node(
        op, ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride], auto_pad=auto_pad
    )
    proto = model([node], [vi("x", ["N", 4, "H", "W"])], [vi("y", None)], opset=11)
    assert_matches(proto, {"x": RNG.standard_normal((2, 4, size, size + 3)).astype(np.float32)})


def test_stride_one_same_pool_exports_with_symbolic_sizes() -> None:
    """PP-OCRv5's 2x2 stride-1 SAME max pool: its pads do not depend on the input size, so the
    export stays dynamic in H and W."""
    node = oh.make_node(
        "MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[1, 1], auto_pad="SAME_UPPER"
    )
    proto = model([node], [vi("x", ["N", 4, "H", "W"])], [vi("y", None)], opset=11)
    module = to_torch(ir.serde.deserialize_model(proto)).eval()
    h, w = torch.export.Dim("h", min=2, max=64), torch.export.Dim("w", min=2, max=64)
    program = torch.export.export(
        module, (torch.zeros(1, 4, 6, 6),), dynamic_shapes={"x": {2: h, 3: w}}, strict=False
    )
    x = torch.randn(1, 4, 9, 13)
    assert program.module()(x)[0].shape == (1, 4, 9, 13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, 3])
def test_softmax_before_opset_13_reads_the_input_as_2d(op: str, axis: int | None) -> None:
    attrs = {} if axis is None else {"axis": axis}
    node = oh.make_node(op, ["x"], ["y"], **attrs)
    proto = model([node], [vi("x", ["N", 3, 4, 5])], [vi("y", None)], opset=11)
    assert_matches(proto, {"x": RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)})


@pytest.mark.parametrize("compute", ["float16", "bfloat16"])
def test_batch_norm_statistics_beyond_half_precision_range(compute: str) -> None:
    """PP-OCRv4's detector has running variances near 1e8: inf in float16. The parameters
    stay float32 and the normalization runs in float32 under a half compute dtype."""
    from onnx_op_cases import const

    rng = np.random.default_rng(0)
    channels = 4
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], epsilon=1e-5),
    ]
    inits = [
        const("w", rng.standard_normal((channels, 3, 3, 3)) * 3000, np.float32),
        const("g", rng.uniform(0.7, 1.1, channels), np.float32),
        const("b", rng.uniform(-0.4, 0.4, channels), np.float32),
        const("m", rng.uniform(-500, 300, channels), np.float32),
        const("v", rng.uniform(1e7, 1e8, channels), np.float32),
    ]
    proto = model(nodes, [vi("x", ["N", 3, "H", "W"])], [vi("y", None)], inits, opset=15)
    x = torch.from_numpy(rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    graph = ir.serde.deserialize_model(proto)
    with torch.no_grad():
        want = to_torch(graph).eval()(x)[0]
        got = to_torch(graph, compute=getattr(torch, compute)).eval()(x)[0]
    assert torch.isfinite(got).all()
    assert float((got - want).abs().max()) < 0.05 * float(want.abs().max())

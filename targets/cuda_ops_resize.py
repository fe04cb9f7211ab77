"""ONNX -> torch: ``Resize`` (nearest, linear, cubic) and ``Upsample``, as ONNX defines them.

Each resized axis is done on its own, which is exact for these modes (they are separable):
the output positions are mapped to input coordinates by the node's
``coordinate_transformation_mode``, then gathered (nearest) or blended from 2 (linear) or 4
(cubic) neighbours. Doing it this way instead of mapping to ``F.interpolate`` keeps every ONNX
mode (``asymmetric``, ``half_pixel_symmetric``, the four nearest roundings, ``exclude_outside``)
exact, and it exports with symbolic sizes: the positions are an ``arange`` of the output size.
Coordinates are float32 whatever the compute dtype, as ONNX Runtime computes them.

Scales must be known when the module is built (an initializer or a Constant): the output size
is computed from them. Sizes may come from shapes (``Concat`` of ``Shape`` slices).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ai_vmm.targets.cuda_convert_base import (
    CONST_INPUTS,
    ConversionError,
    Node,
    as_tensor,
    constant_array,
    ints,
    onnx_op,
)

__all__ = ["resize_support"]

_MODES = ("nearest", "linear", "cubic")
_TRANSFORMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
)
_ROUNDING = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _scales_position(op_type: str, opset: int) -> int:
    return 2 if op_type == "Resize" and opset >= 11 else 1


CONST_INPUTS["Resize"] = (1, 2)
CONST_INPUTS["Upsample"] = (1,)


def resize_support(node: ir.Node, opset: int) -> str | None:
    """Why this Resize/Upsample node does not convert, ``None`` when it does."""

    def attr(name: str, default: Any = None) -> Any:
        a = node.attributes.get(name)
        return default if a is None else a.value

    op = node.op_type
    mode = attr("mode", "nearest")
    if mode not in _MODES:
        return f"{op} mode {mode!r}"
    transform = attr("coordinate_transformation_mode", "half_pixel")
    if op == "Resize" and opset >= 11 and transform not in _TRANSFORMS:
        return f"Resize coordinate_transformation_mode {transform!r}"
    if attr("nearest_mode", "round_prefer_floor") not in _ROUNDING:
        return f"Resize nearest_mode {attr('nearest_mode')!r}"
    if attr("antialias", 0):
        return "Resize with antialias=1"
    if attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "Resize with keep_aspect_ratio_policy other than stretch"
    position = _scales_position(op, opset)
    scales = node.inputs[position] if len(node.inputs) > position else None
    if scales is not None and constant_array(scales) is None:
        return f"{op} with scales computed from data (the output size must be known)"
    return None


def _transform(
    pos: torch.Tensor, mode: str, scale: Any, size_in: Any, size_out: Any
) -> torch.Tensor:
    """Output positions -> input coordinates (ONNX's coordinate_transformation_mode)."""
    if mode == "asymmetric":
        return pos / scale
    if mode == "align_corners":
        if statically_known_true(size_out == 1):
            return torch.zeros_like(pos)
        return pos * ((size_in - 1) / (size_out - 1))
    half = (pos + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return half if not statically_known_true(size_out == 1) else torch.zeros_like(pos)
    if mode == "half_pixel_symmetric":
        adjustment = size_out / (scale * size_in)
        return half + (size_in / 2) * (1 - adjustment)
    return half


def _round(x: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "floor":
        return torch.floor(x)
    if rounding == "ceil":
        return torch.ceil(x)
    if rounding == "round_prefer_ceil":
        return torch.floor(x + 0.5)
    return torch.ceil(x - 0.5)


def _cubic_weights(t: torch.Tensor, a: float) -> list[torch.Tensor]:
    """Keys' cubic convolution weights of the neighbours at -1, 0, +1, +2 (ONNX's formula)."""
    s = 1 - t
    return [
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * s - (a + 3)) * s * s + 1,
        ((a * (s + 1) - 5 * a) * (s + 1) + 8 * a) * (s + 1) - 4 * a,
    ]


def _resize_axis(node: Node, x: torch.Tensor, dim: int, size_out: Any, scale: Any) -> torch.Tensor:
    size_in = x.shape[dim]
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    if node.op_type == "Upsample" or node.opset < 11:
        transform = "asymmetric"  # Upsample and Resize-10 define only this mapping
    pos = torch.arange(size_out, dtype=torch.float32, device=x.device)
    coord = _transform(pos, transform, scale, size_in, size_out)
    last = size_in - 1
    shape = [1] * x.dim()
    shape[dim] = -1

    if mode == "nearest":
        rounding = node.attr("nearest_mode", "round_prefer_floor")
        if node.op_type == "Upsample" or node.opset < 11:
            rounding = "floor"
        index = _round(coord, rounding).to(torch.int64).clamp(0, last)
        return x.index_select(dim, index)
    if mode == "linear":
        coord = coord.clamp(0, last)
        low = coord.floor().to(torch.int64)
        high = (low + 1).clamp(max=last)
        weight = (coord - low).to(x.dtype).reshape(shape)
        return x.index_select(dim, low) * (1 - weight) + x.index_select(dim, high) * weight
    base = coord.floor()
    weights = _cubic_weights(coord - base, float(node.attr("cubic_coeff_a", -0.75)))
    base_index = base.to(torch.int64)
    indices = [base_index + k for k in (-1, 0, 1, 2)]
    if node.attr("exclude_outside", 0):
        weights = [
            torch.where((i >= 0) & (i <= last), w, torch.zeros_like(w))
            for i, w in zip(indices, weights, strict=True)
        ]
        total = weights[0] + weights[1] + weights[2] + weights[3]
        weights = [w / total for w in weights]
    out = None
    for index, w in zip(indices, weights, strict=True):
        term = x.index_select(dim, index.clamp(0, last)) * w.to(x.dtype).reshape(shape)
        out = term if out is None else out + term
    assert out is not None
    return out


@onnx_op("Resize", "Upsample", shape_aware=True)
def _resize(node: Node, device: torch.device, x: Any, *rest: Any) -> Any:
    x = as_tensor(x, device)
    rank = x.dim()
    position = _scales_position(node.op_type, node.opset)
    scales_array = node.consts.get(position)
    with_sizes = node.op_type == "Resize" and node.opset >= 11 and len(rest) > 2
    sizes_value = rest[2] if with_sizes else None
    axes = [a + rank if a < 0 else a for a in (node.attr("axes") or range(rank))]
    out_sizes: list[Any]
    scales: list[Any]
    if sizes_value is not None:
        given = ints(sizes_value, "Resize sizes")
        if len(given) != len(axes):
            raise ConversionError(f"Resize sizes has {len(given)} values for {len(axes)} axes")
        out_sizes, scales = [], []
        for dim, size in zip(axes, given, strict=True):
            out_sizes.append(size)
            # ONNX Runtime's scale for a given size: float(out) / in, in float32.
            scales.append(_f32_ratio(size, x.shape[dim]))
    elif (scales_array is not None and scales_array.size) or node.attr("scales"):
        given_scales = scales_array if scales_array is not None and scales_array.size else None
        if given_scales is None:  # Upsample before opset 9: an attribute
            given_scales = np.asarray(node.attr("scales"), dtype=np.float32)
        values = [float(np.float32(v)) for v in given_scales.reshape(-1)]
        if len(values) != len(axes):
            raise ConversionError(f"Resize scales has {len(values)} values for {len(axes)} axes")
        scales = values
        out_sizes = [_scaled_size(x.shape[d], s) for d, s in zip(axes, values, strict=True)]
    else:
        raise ConversionError(f"{node.op_type} without scales or sizes")
    out = x
    for dim, size, scale in zip(axes, out_sizes, scales, strict=True):
        # An axis kept at its size by a size (the batch and channels of Concat(Shape(x)[:2],
        # ...)) maps every position to itself in every mode; from a scale only at 1.0.
        same = statically_known_true(size == x.shape[dim])
        if same and (sizes_value is not None or scale == 1.0):
            continue
        out = _resize_axis(node, out, dim, size, scale)
    return out


def _scaled_size(size_in: Any, scale: float) -> Any:
    """floor(in * scale) as ONNX Runtime computes it (float32 product)."""
    if isinstance(size_in, int):
        return int(np.float32(size_in) * np.float32(scale))
    if float(scale).is_integer() and scale >= 1:
        # Exact for any size below 2**24 (float32's integers), and a plain product keeps the
        # symbolic size recognisable: floor(1.0 * batch) was not `batch` to torch.export, so
        # a batch resized by 1.0 no longer looked like the input's batch.
        return size_in * int(scale)
    return math.floor(size_in * scale)


def _f32_ratio(size_out: Any, size_in: Any) -> Any:
    if isinstance(size_out, int) and isinstance(size_in, int):
        return float(np.float32(size_out) / np.float32(size_in))
    return size_out / size_in

"""ONNX -> torch op functions: elementwise, shape and tensor ops (registered in ``OPS``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from ai_vmm.targets.cuda_convert_base import (
    CONST_INPUTS,
    INT_TYPES,
    OPS,
    SHAPE_AWARE,
    SMALL_CONSTANT,
    ConversionError,
    Node,
    Op,
    ShapeValue,
    as_tensor,
    axis_index,
    ints,
    is_shape,
    onnx_op,
    scalar_of,
    shape_elementwise,
    to_compute,
    torch_dtype,
)

__all__: list[str] = []

_UNARY: dict[str, Callable[[Any], Any]] = {
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sign": torch.sign,
    "Erf": torch.erf,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Relu": torch.relu,
    "Softsign": F.softsign,
    "Mish": F.mish,
    "IsNaN": torch.isnan,
}


def _unary(fn: Callable[[Any], Any]) -> Op:
    return lambda node, device, x: fn(x)


for _name, _fn in _UNARY.items():
    OPS[_name] = _unary(_fn)


@onnx_op("Neg", "Abs", shape_aware=True)
def _neg_abs(node: Node, device: torch.device, x: Any) -> Any:
    """Also on sizes: ``Neg`` of an axis count feeds ``ConstantOfShape`` in expanded
    LayerNormalization; as a tensor it would be data there."""
    fn = (lambda v: -v) if node.op_type == "Neg" else abs
    if is_shape(x):
        return ShapeValue([fn(v) for v in x.values], x.scalar, x.dtype)
    return torch.neg(x) if node.op_type == "Neg" else torch.abs(x)


_SHAPE_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": lambda a, b: a // b if a >= 0 and b > 0 else int(a / b),
    "Equal": lambda a, b: int(a == b),
    "Less": lambda a, b: int(a < b),
    "Greater": lambda a, b: int(a > b),
    "LessOrEqual": lambda a, b: int(a <= b),
    "GreaterOrEqual": lambda a, b: int(a >= b),
    "And": lambda a, b: int(bool(a) and bool(b)),
    "Or": lambda a, b: int(bool(a) or bool(b)),
}
_TENSOR_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}


def _binary(name: str) -> Op:
    shape_fn = _SHAPE_BINARY.get(name)
    tensor_fn = _TENSOR_BINARY.get(name)

    def run(node: Node, device: torch.device, a: Any, b: Any) -> Any:
        if shape_fn is not None and is_shape(a) and is_shape(b):
            return shape_elementwise(shape_fn, [a, b])
        a, b = as_tensor(a, device), as_tensor(b, device)
        if name == "Pow" and a.dtype in INT_TYPES and b.is_floating_point():
            return torch.pow(a.to(b.dtype), b).to(a.dtype)  # ONNX: the base's type
        if name == "Div":
            if a.dtype in INT_TYPES:
                return torch.div(a, b, rounding_mode="trunc")
            return torch.div(a, b)
        assert tensor_fn is not None
        return tensor_fn(a, b)

    return run


for _name in {*_SHAPE_BINARY, *_TENSOR_BINARY, "Div"}:
    OPS[_name] = _binary(_name)
    if _name in _SHAPE_BINARY or _name == "Div":
        SHAPE_AWARE.add(_name)


@onnx_op("BitShift")
def _bit_shift(node: Node, device: torch.device, a: Any, b: Any) -> Any:
    if node.attr("direction") == "RIGHT":
        return torch.bitwise_right_shift(a, b)
    return torch.bitwise_left_shift(a, b)


@onnx_op("Mod", shape_aware=True)
def _mod(node: Node, device: torch.device, a: Any, b: Any) -> Any:
    fmod = bool(node.attr("fmod", 0))
    if is_shape(a) and is_shape(b):
        # fmod: the sign of the dividend (C's %); else of the divisor (Python's %).
        return shape_elementwise(
            (lambda x, y: x - y * int(x / y)) if fmod else (lambda x, y: x % y), [a, b]
        )
    a, b = as_tensor(a, device), as_tensor(b, device)
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


@onnx_op("Not", shape_aware=True)
def _not(node: Node, device: torch.device, x: Any) -> Any:
    if is_shape(x):
        return ShapeValue([int(not v) for v in x.values], x.scalar)
    return torch.logical_not(as_tensor(x, device))


@onnx_op("Max", "Min", "Sum", "Mean", shape_aware=True)
def _variadic(node: Node, device: torch.device, *xs: Any) -> Any:
    if all(is_shape(x) for x in xs):
        folds: dict[str, Callable[..., Any]] = {"Max": max, "Min": min, "Sum": lambda *v: sum(v)}
        fn = folds.get(node.op_type)
        if fn is not None:
            return shape_elementwise(fn, list(xs))
    ts = [as_tensor(x, device) for x in xs]
    out = ts[0]
    for t in ts[1:]:
        if node.op_type == "Max":
            out = torch.maximum(out, t)
        elif node.op_type == "Min":
            out = torch.minimum(out, t)
        else:
            out = out + t
    return out / len(ts) if node.op_type == "Mean" else out


@onnx_op("Identity", "Dropout", shape_aware=True)
def _identity(node: Node, device: torch.device, x: Any, *rest: Any) -> Any:
    return x


@onnx_op("Constant", shape_aware=True)
def _constant(node: Node, device: torch.device) -> Any:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            return _constant_value(np.asarray(node.attrs[key]), node.compute, device)
    raise ConversionError(f"Constant with attribute {sorted(node.attrs)} is not supported")


def _constant_value(array: np.ndarray, compute: torch.dtype, device: torch.device) -> Any:
    if array.dtype in (np.int64, np.int32) and array.ndim <= 1 and array.size <= SMALL_CONSTANT:
        dtype = torch.int64 if array.dtype == np.int64 else torch.int32
        return ShapeValue([int(v) for v in array.reshape(-1)], array.ndim == 0, dtype)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return to_compute(tensor, compute) if tensor.dtype == torch.float32 else tensor


@onnx_op("Shape", shape_aware=True)
def _shape(node: Node, device: torch.device, x: Any) -> ShapeValue:
    dims = list(x.shape) if not is_shape(x) else ([] if x.scalar else [len(x.values)])
    start, end = node.attr("start", 0), node.attr("end", None)
    return ShapeValue(dims[start:end])


@onnx_op("Size", shape_aware=True)
def _size(node: Node, device: torch.device, x: Any) -> ShapeValue:
    return ShapeValue([x.numel() if not is_shape(x) else len(x.values)], scalar=True)


@onnx_op("Cast", "CastLike", shape_aware=True)
def _cast(node: Node, device: torch.device, x: Any, like: Any = None) -> Any:
    if node.op_type == "CastLike":
        dtype = as_tensor(like, device).dtype
    else:
        dtype = torch_dtype(node.attr("to"), node.compute)
    if isinstance(x, ShapeValue) and dtype in INT_TYPES:
        return ShapeValue(x.values, x.scalar, dtype)  # sizes are whole numbers in any int type
    if isinstance(x, ShapeValue) and dtype == torch.bool:
        return ShapeValue([int(v != 0) for v in x.values], x.scalar)
    if isinstance(x, ShapeValue) and dtype.is_floating_point:
        return ShapeValue(x.values, x.scalar, dtype)
    return as_tensor(x, device).to(dtype)


@onnx_op("Gather", shape_aware=True)
def _gather(node: Node, device: torch.device, data: Any, indices: Any) -> Any:
    axis = node.attr("axis", 0)
    if is_shape(data) and is_shape(indices):
        n = len(data.values)
        picked = [data.values[i + n if i < 0 else i] for i in indices.values]
        return ShapeValue(picked, scalar=indices.scalar, dtype=data.dtype)
    data, indices = as_tensor(data, device), as_tensor(indices, device)
    axis = axis_index(axis, data.dim())
    if indices.dim() == 0:
        # A 0-d index tensor would be read as a Python int (data-dependent in export; inside a
        # Loop's scan, the step counter is one): select through index_select instead.
        index = torch.where(indices < 0, indices + data.shape[axis], indices).reshape(1)
        return data.index_select(axis, index.to(torch.int64)).squeeze(axis)
    return data[(slice(None),) * axis + (indices,)]


@onnx_op("GatherElements")
def _gather_elements(node: Node, device: torch.device, data: Any, indices: Any) -> Any:
    axis = axis_index(node.attr("axis", 0), data.dim())
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    return torch.gather(data, axis, indices)


@onnx_op("GatherND")
def _gather_nd(node: Node, device: torch.device, data: Any, indices: Any) -> Any:
    if node.attr("batch_dims", 0):
        raise ConversionError("GatherND with batch_dims > 0 is not supported")
    k = indices.shape[-1]
    if not isinstance(k, int):
        raise ConversionError("GatherND with a dynamic index depth")
    return data[tuple(indices[..., i] for i in range(k))]


@onnx_op("Unsqueeze", shape_aware=True)
def _unsqueeze(node: Node, device: torch.device, x: Any, axes: Any = None) -> Any:
    axes_list = ints(axes, "Unsqueeze axes") if axes is not None else list(node.attr("axes"))
    if is_shape(x):
        if x.scalar and axes_list in ([0], [-1]):
            return ShapeValue(list(x.values), dtype=x.dtype)
        x = as_tensor(x, device)
    rank = x.dim() + len(axes_list)
    for axis in sorted(axis_index(a, rank) for a in axes_list):
        x = x.unsqueeze(axis)
    return x


@onnx_op("Squeeze", shape_aware=True)
def _squeeze(node: Node, device: torch.device, x: Any, axes: Any = None) -> Any:
    axes_list = ints(axes, "Squeeze axes") if axes is not None else list(node.attr("axes", []))
    if is_shape(x):
        if not x.scalar and len(x.values) == 1:
            return ShapeValue(list(x.values), scalar=True, dtype=x.dtype)
        x = as_tensor(x, device)
    if not axes_list:
        return x.squeeze()
    rank = x.dim()
    for axis in sorted((axis_index(a, rank) for a in axes_list), reverse=True):
        x = x.squeeze(axis)
    return x


@onnx_op("Concat", shape_aware=True)
def _concat(node: Node, device: torch.device, *xs: Any) -> Any:
    if all(is_shape(x) for x in xs):
        return ShapeValue([v for x in xs for v in x.values], dtype=xs[0].dtype)
    ts = [as_tensor(x, device) for x in xs]
    return torch.cat(ts, dim=node.attr("axis"))


@onnx_op("Slice", shape_aware=True)
def _slice(
    node: Node,
    device: torch.device,
    x: Any,
    starts: Any,
    ends: Any,
    axes: Any = None,
    steps: Any = None,
) -> Any:
    s = ints(starts, "Slice starts")
    e = ints(ends, "Slice ends")
    a = ints(axes, "Slice axes") if axes is not None else list(range(len(s)))
    st = ints(steps, "Slice steps") if steps is not None else [1] * len(s)
    if is_shape(x):
        if a not in ([0], [-1]) or st != [1]:
            x = as_tensor(x, device)
        else:
            n = len(x.values)
            start = max(0, min(n, s[0] + n if s[0] < 0 else s[0]))
            end = max(0, min(n, e[0] + n if e[0] < 0 else e[0]))
            return ShapeValue(x.values[start:end], dtype=x.dtype)
    index: list[Any] = [slice(None)] * x.dim()
    big = 1 << 62
    for start, end, axis, step in zip(s, e, a, st, strict=True):
        if not isinstance(step, int) or step == 0:
            raise ConversionError("Slice with a dynamic or zero step")
        dim = axis_index(axis, x.dim())
        if step < 0:
            if not (isinstance(start, int) and isinstance(end, int)):
                raise ConversionError("Slice with a negative step and computed bounds")
            x = x.flip(dim)  # then a forward slice of the flipped axis
            begin, stop = _reversed_bounds(start, end, x.shape[dim], big)
            index[dim] = slice(begin, stop, None if step == -1 else -step)
            continue
        index[dim] = slice(
            None if start == 0 else start,
            None if isinstance(end, int) and end >= big else end,
            None if step == 1 else step,
        )
    return x[tuple(index)]


def _reversed_bounds(start: int, end: int, size: Any, big: int) -> tuple[Any, Any]:
    """A negative-step slice's ONNX bounds -> forward bounds on the flipped axis.

    Index i is size - 1 - i there; a negative bound counts from the end (-1 - bound), so the
    usual reversal (``start=-1, end=-INT_MAX``) needs no size and stays symbolic.
    """
    if start >= big:
        begin: Any = 0
    else:
        begin = -1 - start if start < 0 else size - 1 - start
    if end <= -big:
        stop: Any = None
    else:
        stop = -1 - end if end < 0 else size - 1 - end
    if isinstance(size, int):
        begin = min(max(begin, 0), size)
        stop = None if stop is None else min(max(stop, 0), size)
    return begin, stop


@onnx_op("Reshape", shape_aware=True)
def _reshape(node: Node, device: torch.device, x: Any, shape: Any) -> Any:
    sizes = ints(shape, "Reshape shape")
    if is_shape(x):
        if sizes in ([-1], [len(x.values)]) or (sizes == [] and len(x.values) == 1):
            return ShapeValue(list(x.values), scalar=sizes == [], dtype=x.dtype)
        x = as_tensor(x, device)
    if not node.attr("allowzero", 0):
        sizes = [x.shape[i] if (isinstance(v, int) and v == 0) else v for i, v in enumerate(sizes)]
    return x.reshape(sizes)


@onnx_op("Flatten")
def _flatten(node: Node, device: torch.device, x: Any) -> Any:
    axis = axis_index(node.attr("axis", 1), x.dim())
    lead = math.prod(x.shape[:axis]) if axis else 1
    return x.reshape(lead, -1)


@onnx_op("Expand", shape_aware=True)
def _expand(node: Node, device: torch.device, x: Any, shape: Any) -> Any:
    sizes = ints(shape, "Expand shape")
    x = as_tensor(x, device)
    out_shape = torch.broadcast_shapes(tuple(x.shape), tuple(sizes))
    return x.expand(out_shape)


@onnx_op("Tile", shape_aware=True)
def _tile(node: Node, device: torch.device, x: Any, repeats: Any) -> Any:
    return as_tensor(x, device).repeat(*ints(repeats, "Tile repeats"))


@onnx_op("Transpose")
def _transpose(node: Node, device: torch.device, x: Any) -> Any:
    perm = node.attr("perm") or list(reversed(range(x.dim())))
    return x.permute(*perm)


@onnx_op("Where", shape_aware=True)
def _where(node: Node, device: torch.device, cond: Any, a: Any, b: Any) -> Any:
    if is_shape(cond) and is_shape(a) and is_shape(b):
        return shape_elementwise(lambda c, x, y: x if c else y, [cond, a, b])
    cond, a, b = (as_tensor(v, device) for v in (cond, a, b))
    return torch.where(cond.to(torch.bool), a, b)


@onnx_op("ConstantOfShape", shape_aware=True)
def _constant_of_shape(node: Node, device: torch.device, shape: Any) -> Any:
    sizes = ints(shape, "ConstantOfShape shape")
    value = node.attr("value")
    if value is None:
        return torch.zeros(sizes, dtype=node.compute, device=device)
    fill = torch.from_numpy(np.asarray(value).reshape(-1)[:1].copy())
    small = len(sizes) == 1 and type(sizes[0]) is int and sizes[0] <= SMALL_CONSTANT
    if fill.dtype == torch.int64 and small:  # e.g. a run of 1s for a reduced shape: sizes
        return ShapeValue([int(fill.item())] * sizes[0])
    dtype = node.compute if fill.dtype == torch.float32 else fill.dtype
    return torch.full(sizes, fill.item(), dtype=dtype, device=device)


CONST_INPUTS["Range"] = (0, 1, 2)


@onnx_op("Range", shape_aware=True)
def _range(node: Node, device: torch.device, start: Any, limit: Any, delta: Any) -> Any:
    bounds, dtypes = [], []
    for position, (value, what) in enumerate(
        ((start, "Range start"), (limit, "Range limit"), (delta, "Range delta"))
    ):
        if position in node.consts:  # a constant, float ones included
            array = node.consts[position]
            bounds.append(array.reshape(-1)[0].item())
            dtypes.append(torch_dtype(ir.DataType.from_numpy(array.dtype), node.compute))
        elif isinstance(value, ShapeValue):  # sizes, possibly cast to float
            bounds.append(scalar_of(value, what))
            dtypes.append(node.compute if value.dtype == torch.float32 else value.dtype)
        else:
            raise ConversionError("Range over computed (non-shape) values")
    dtype = dtypes[0]
    if dtype == torch.int64 and all(type(v) is int for v in bounds):
        values = range(*bounds)
        if len(values) <= SMALL_CONSTANT:  # e.g. axes: kept as sizes, not data
            return ShapeValue(list(values))
    return torch.arange(*bounds, dtype=dtype, device=device)


@onnx_op("CumSum", shape_aware=True)
def _cumsum(node: Node, device: torch.device, x: Any, axis: Any) -> Any:
    x = as_tensor(x, device)
    dim = axis_index(scalar_of(axis, "CumSum axis"), x.dim())
    if node.attr("reverse", 0):
        x = x.flip(dim)
    out = torch.cumsum(x, dim=dim)
    if node.attr("exclusive", 0):
        out = out - x
    return out.flip(dim) if node.attr("reverse", 0) else out


@onnx_op("Trilu", shape_aware=True)
def _trilu(node: Node, device: torch.device, x: Any, k: Any = None) -> Any:
    diagonal = scalar_of(k, "Trilu k") if k is not None else 0
    return torch.triu(x, diagonal) if node.attr("upper", 1) else torch.tril(x, diagonal)


@onnx_op("Split", shape_aware=True)
def _split(node: Node, device: torch.device, x: Any, split: Any = None) -> Any:
    axis = axis_index(node.attr("axis", 0), x.dim())
    if split is not None:
        sizes: Any = ints(split, "Split sizes")
    elif node.attr("split") is not None:
        sizes = list(node.attr("split"))
    else:
        parts = node.attr("num_outputs") or len(node.outputs)
        sizes = -(-x.shape[axis] // parts)
    return tuple(torch.split(x, sizes, dim=axis))


@onnx_op("Pad", shape_aware=True)
def _pad(
    node: Node,
    device: torch.device,
    x: Any,
    pads: Any = None,
    value: Any = None,
    axes: Any = None,
) -> Any:
    x = as_tensor(x, device)
    p = ints(pads, "Pad pads") if pads is not None else list(node.attr("pads"))
    axes_list = ints(axes, "Pad axes") if axes is not None else list(range(x.dim()))
    n = len(axes_list)
    per_axis = {axis_index(a, x.dim()): (p[i], p[i + n]) for i, a in enumerate(axes_list)}
    flat: list[Any] = []
    for dim in reversed(range(x.dim())):
        flat.extend(per_axis.get(dim, (0, 0)))
    mode = node.attr("mode", "constant")
    fill = 0.0
    if value is not None:
        fill = float(scalar_of(value, "Pad value")) if is_shape(value) else value.item()
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise ConversionError(f"Pad mode '{mode}'")
    if torch_mode == "constant":
        return F.pad(x, flat, value=fill)
    while len(flat) > 2 and flat[-2:] == [0, 0]:
        flat = flat[:-2]  # torch pads only the last dimensions in these modes
    return F.pad(x, flat, mode=torch_mode)


@onnx_op("MatMul")
def _matmul(node: Node, device: torch.device, a: Any, b: Any) -> Any:
    return torch.matmul(a, b)


@onnx_op("Gemm")
def _gemm(node: Node, device: torch.device, a: Any, b: Any, c: Any = None) -> Any:
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if node.attr("transA", 0):
        a = a.t()
    if node.attr("transB", 0) and alpha == 1.0 and (c is None or beta == 1.0):
        return F.linear(a, b, c if c is not None and c.dim() == 1 else None) + (
            c if c is not None and c.dim() != 1 else 0
        )
    if node.attr("transB", 0):
        b = b.t()
    out = torch.matmul(a, b)
    if alpha != 1.0:
        out = out * alpha
    if c is not None:
        out = out + (c * beta if beta != 1.0 else c)
    return out


def _per_axis(param: Any, x: Any, axis: int) -> Any:
    """A scale or zero point: a scalar, or 1-D along ``axis`` (per channel)."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[axis_index(axis, x.dim())] = -1
    return param.reshape(shape)


_QUANT_RANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int16: (-32768, 32767)}


@onnx_op("QuantizeLinear")
def _quantize(node: Node, device: torch.device, x: Any, scale: Any, zero: Any = None) -> Any:
    if node.attr("block_size", 0):
        raise ConversionError("QuantizeLinear with block_size (blocked quantization)")
    dtype = zero.dtype if zero is not None else torch.uint8
    if dtype not in _QUANT_RANGE:
        raise ConversionError(f"QuantizeLinear to {dtype}")
    axis = node.attr("axis", 1)
    # float32 whatever the compute dtype: x / scale rounds to the integer grid.
    q = torch.round(x.float() / _per_axis(scale, x, axis).float())
    if zero is not None:
        q = q + _per_axis(zero, x, axis).float()
    low, high = _QUANT_RANGE[dtype]
    return q.clamp(low, high).to(dtype)


@onnx_op("DequantizeLinear")
def _dequantize(node: Node, device: torch.device, x: Any, scale: Any, zero: Any = None) -> Any:
    if node.attr("block_size", 0):
        raise ConversionError("DequantizeLinear with block_size (blocked quantization)")
    axis = node.attr("axis", 1)
    values = x.float()
    if zero is not None:
        values = values - _per_axis(zero, x, axis).float()
    return (values * _per_axis(scale, x, axis).float()).to(scale.dtype)

"""ONNX -> PyTorch: an ``nn.Module`` that runs an ONNX graph with torch ops, for ``torch.export``.

The cuda target compiles ONNX subgraphs with PyTorch's ahead-of-time compiler, so it needs the
subgraph as a torch program. This module is our own small op mapping (docs/gpu.md says why we
did not take onnx2torch): :data:`OPS` maps each supported ``op_type`` of the standard domain to a
function of torch ops, :func:`node_support` says per node whether it converts and why not, and
:func:`to_torch` builds the module.

Shapes stay symbolic. ``torch.export`` traces ``forward`` with fake tensors whose sizes are
``SymInt``\\ s, so the int64 tensors an ONNX graph computes from ``Shape`` (and its small integer
constants) are carried as :class:`ShapeValue`, a list of Python ints / ``SymInt``\\ s, instead of
tensors: ``Reshape``/``Expand``/``Slice``/``Range`` get sizes, not data, and the export stays
dynamic. They become tensors only where a data op consumes them.

Precision: ``compute_dtype`` replaces float32 everywhere inside the graph (weights, constants,
``Cast(to=FLOAT)``); float32 inputs are cast on entry and float outputs cast back to float32 on
exit, so the module's signature stays the ONNX model's.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

__all__ = [
    "OPS",
    "ConversionError",
    "ShapeValue",
    "named_forward",
    "node_support",
    "python_names",
    "to_torch",
    "torch_dtype",
]


class ConversionError(Exception):
    """An ONNX node that this converter cannot express in torch (the message says why)."""


@dataclass
class ShapeValue:
    """A 0-D or 1-D int64 ONNX tensor held as Python ints / ``SymInt``\\ s (see module doc)."""

    values: list[Any]
    scalar: bool = False


_DTYPES: dict[ir.DataType, torch.dtype] = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
}
_INT_TYPES = {torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8}
_SMALL_CONSTANT = 64
"""Integer constants with at most this many elements (0-D/1-D) are kept as ShapeValues."""


def torch_dtype(
    dtype: ir.DataType | int | None, compute: torch.dtype = torch.float32
) -> torch.dtype:
    """The torch dtype of an ONNX element type (float32 becomes ``compute``)."""
    if dtype is None:
        raise ConversionError("a tensor without an element type")
    dt = ir.DataType(dtype)
    if dt == ir.DataType.FLOAT:
        return compute
    if dt not in _DTYPES:
        raise ConversionError(f"element type {dt.name} has no torch equivalent here")
    return _DTYPES[dt]


# --------------------------------------------------------------------------------------------
# Node context: attributes as Python values
# --------------------------------------------------------------------------------------------


@dataclass
class Node:
    """One ONNX node, reduced to what the op functions read."""

    op_type: str
    attrs: dict[str, Any]
    inputs: list[str]
    outputs: list[str]
    opset: int
    compute: torch.dtype

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


def _attr_value(attr: ir.Attr) -> Any:
    kind = attr.type
    if kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
        raise ConversionError("subgraph attributes (If/Loop/Scan) are not converted")
    if kind == ir.AttributeType.TENSOR:
        return attr.value.numpy()
    if kind == ir.AttributeType.STRING:
        value = attr.value
        return value.decode() if isinstance(value, bytes) else value
    if kind in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
        return list(attr.value)
    return attr.value


# --------------------------------------------------------------------------------------------
# Values: tensors or ShapeValues
# --------------------------------------------------------------------------------------------


def _is_shape(value: Any) -> bool:
    return isinstance(value, ShapeValue)


def _tensor(value: Any, device: torch.device) -> Any:
    """A torch tensor for ``value`` (a ShapeValue becomes an int64 tensor on ``device``)."""
    if not isinstance(value, ShapeValue):
        return value
    items = value.values
    if all(isinstance(v, int) for v in items):
        out = torch.tensor(items, dtype=torch.int64, device=device)
    else:
        out = torch.stack([torch.scalar_tensor(v, dtype=torch.int64, device=device) for v in items])
    return out.reshape(()) if value.scalar else out


def _ints(value: Any, what: str) -> list[Any]:
    """Sizes / axes / indices given as a ShapeValue (a data tensor cannot be read in export)."""
    if value is None:
        return []
    if isinstance(value, ShapeValue):
        return list(value.values)
    if isinstance(value, list | tuple):
        return list(value)
    raise ConversionError(
        f"{what} is computed from tensor data, not from shapes or constants; "
        "torch.export cannot read it (data-dependent shape)"
    )


def _scalar(value: Any, what: str) -> Any:
    items = _ints(value, what)
    if len(items) != 1:
        raise ConversionError(f"{what} must hold one value, got {len(items)}")
    return items[0]


def _shape_elementwise(fn: Callable[..., Any], args: Sequence[ShapeValue]) -> ShapeValue:
    length = max(len(a.values) for a in args)
    cols = []
    for a in args:
        if len(a.values) not in (1, length):
            raise ConversionError("shape arithmetic on lists of different lengths")
        cols.append(a.values * length if len(a.values) == 1 else a.values)
    return ShapeValue(
        [fn(*row) for row in zip(*cols, strict=True)], scalar=all(a.scalar for a in args)
    )


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --------------------------------------------------------------------------------------------
# Op functions: (node, device, *inputs) -> output or tuple of outputs
# --------------------------------------------------------------------------------------------

Op = Callable[..., Any]
OPS: dict[str, Op] = {}
_SHAPE_AWARE: set[str] = set()
"""Ops whose function receives ShapeValues as they are (others get tensors)."""


def _op(*names: str, shape_aware: bool = False) -> Callable[[Op], Op]:
    def register(fn: Op) -> Op:
        for name in names:
            OPS[name] = fn
            if shape_aware:
                _SHAPE_AWARE.add(name)
        return fn

    return register


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
        if shape_fn is not None and _is_shape(a) and _is_shape(b):
            return _shape_elementwise(shape_fn, [a, b])
        a, b = _tensor(a, device), _tensor(b, device)
        if name == "Pow" and a.dtype in _INT_TYPES and b.is_floating_point():
            return torch.pow(a.to(b.dtype), b).to(a.dtype)  # ONNX: the base's type
        if name == "Div":
            if a.dtype in _INT_TYPES:
                return torch.div(a, b, rounding_mode="trunc")
            return torch.div(a, b)
        assert tensor_fn is not None
        return tensor_fn(a, b)

    return run


for _name in {*_SHAPE_BINARY, *_TENSOR_BINARY, "Div"}:
    OPS[_name] = _binary(_name)
    if _name in _SHAPE_BINARY or _name == "Div":
        _SHAPE_AWARE.add(_name)


@_op("BitShift")
def _bit_shift(node: Node, device: torch.device, a: Any, b: Any) -> Any:
    if node.attr("direction") == "RIGHT":
        return torch.bitwise_right_shift(a, b)
    return torch.bitwise_left_shift(a, b)


@_op("Mod", shape_aware=True)
def _mod(node: Node, device: torch.device, a: Any, b: Any) -> Any:
    fmod = bool(node.attr("fmod", 0))
    if _is_shape(a) and _is_shape(b):
        # fmod: the sign of the dividend (C's %); else of the divisor (Python's %).
        return _shape_elementwise(
            (lambda x, y: x - y * int(x / y)) if fmod else (lambda x, y: x % y), [a, b]
        )
    a, b = _tensor(a, device), _tensor(b, device)
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


@_op("Not", shape_aware=True)
def _not(node: Node, device: torch.device, x: Any) -> Any:
    if _is_shape(x):
        return ShapeValue([int(not v) for v in x.values], x.scalar)
    return torch.logical_not(_tensor(x, device))


@_op("Max", "Min", "Sum", "Mean", shape_aware=True)
def _variadic(node: Node, device: torch.device, *xs: Any) -> Any:
    if all(_is_shape(x) for x in xs):
        folds: dict[str, Callable[..., Any]] = {"Max": max, "Min": min, "Sum": lambda *v: sum(v)}
        fn = folds.get(node.op_type)
        if fn is not None:
            return _shape_elementwise(fn, list(xs))
    ts = [_tensor(x, device) for x in xs]
    out = ts[0]
    for t in ts[1:]:
        if node.op_type == "Max":
            out = torch.maximum(out, t)
        elif node.op_type == "Min":
            out = torch.minimum(out, t)
        else:
            out = out + t
    return out / len(ts) if node.op_type == "Mean" else out


@_op("Identity", "Dropout", shape_aware=True)
def _identity(node: Node, device: torch.device, x: Any, *rest: Any) -> Any:
    return x


@_op("Constant", shape_aware=True)
def _constant(node: Node, device: torch.device) -> Any:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            return _constant_value(np.asarray(node.attrs[key]), node.compute, device)
    raise ConversionError(f"Constant with attribute {sorted(node.attrs)} is not supported")


def _constant_value(array: np.ndarray, compute: torch.dtype, device: torch.device) -> Any:
    if array.dtype == np.int64 and array.ndim <= 1 and array.size <= _SMALL_CONSTANT:
        return ShapeValue([int(v) for v in array.reshape(-1)], scalar=array.ndim == 0)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return tensor.to(compute) if tensor.dtype == torch.float32 else tensor


@_op("Shape", shape_aware=True)
def _shape(node: Node, device: torch.device, x: Any) -> ShapeValue:
    dims = list(x.shape) if not _is_shape(x) else ([] if x.scalar else [len(x.values)])
    start, end = node.attr("start", 0), node.attr("end", None)
    return ShapeValue(dims[start:end])


@_op("Size", shape_aware=True)
def _size(node: Node, device: torch.device, x: Any) -> ShapeValue:
    return ShapeValue([x.numel() if not _is_shape(x) else len(x.values)], scalar=True)


@_op("Cast", "CastLike", shape_aware=True)
def _cast(node: Node, device: torch.device, x: Any, like: Any = None) -> Any:
    if node.op_type == "CastLike":
        dtype = _tensor(like, device).dtype
    else:
        dtype = torch_dtype(node.attr("to"), node.compute)
    if _is_shape(x) and dtype in _INT_TYPES:
        return x
    if _is_shape(x) and dtype == torch.bool:
        return ShapeValue([int(v != 0) for v in x.values], x.scalar)
    return _tensor(x, device).to(dtype)


@_op("Gather", shape_aware=True)
def _gather(node: Node, device: torch.device, data: Any, indices: Any) -> Any:
    axis = node.attr("axis", 0)
    if _is_shape(data) and _is_shape(indices):
        n = len(data.values)
        picked = [data.values[i + n if i < 0 else i] for i in indices.values]
        return ShapeValue(picked, scalar=indices.scalar)
    data, indices = _tensor(data, device), _tensor(indices, device)
    axis = _axis(axis, data.dim())
    return data[(slice(None),) * axis + (indices,)]


@_op("GatherElements")
def _gather_elements(node: Node, device: torch.device, data: Any, indices: Any) -> Any:
    axis = _axis(node.attr("axis", 0), data.dim())
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    return torch.gather(data, axis, indices)


@_op("GatherND")
def _gather_nd(node: Node, device: torch.device, data: Any, indices: Any) -> Any:
    if node.attr("batch_dims", 0):
        raise ConversionError("GatherND with batch_dims > 0 is not supported")
    k = indices.shape[-1]
    if not isinstance(k, int):
        raise ConversionError("GatherND with a dynamic index depth")
    return data[tuple(indices[..., i] for i in range(k))]


@_op("Unsqueeze", shape_aware=True)
def _unsqueeze(node: Node, device: torch.device, x: Any, axes: Any = None) -> Any:
    axes_list = _ints(axes, "Unsqueeze axes") if axes is not None else list(node.attr("axes"))
    if _is_shape(x):
        if x.scalar and axes_list in ([0], [-1]):
            return ShapeValue(list(x.values))
        x = _tensor(x, device)
    rank = x.dim() + len(axes_list)
    for axis in sorted(_axis(a, rank) for a in axes_list):
        x = x.unsqueeze(axis)
    return x


@_op("Squeeze", shape_aware=True)
def _squeeze(node: Node, device: torch.device, x: Any, axes: Any = None) -> Any:
    axes_list = _ints(axes, "Squeeze axes") if axes is not None else list(node.attr("axes", []))
    if _is_shape(x):
        if not x.scalar and len(x.values) == 1:
            return ShapeValue(list(x.values), scalar=True)
        x = _tensor(x, device)
    if not axes_list:
        return x.squeeze()
    rank = x.dim()
    for axis in sorted((_axis(a, rank) for a in axes_list), reverse=True):
        x = x.squeeze(axis)
    return x


@_op("Concat", shape_aware=True)
def _concat(node: Node, device: torch.device, *xs: Any) -> Any:
    if all(_is_shape(x) for x in xs):
        return ShapeValue([v for x in xs for v in x.values])
    ts = [_tensor(x, device) for x in xs]
    return torch.cat(ts, dim=node.attr("axis"))


@_op("Slice", shape_aware=True)
def _slice(
    node: Node,
    device: torch.device,
    x: Any,
    starts: Any,
    ends: Any,
    axes: Any = None,
    steps: Any = None,
) -> Any:
    s = _ints(starts, "Slice starts")
    e = _ints(ends, "Slice ends")
    a = _ints(axes, "Slice axes") if axes is not None else list(range(len(s)))
    st = _ints(steps, "Slice steps") if steps is not None else [1] * len(s)
    if _is_shape(x):
        if a not in ([0], [-1]) or st != [1]:
            x = _tensor(x, device)
        else:
            n = len(x.values)
            start = max(0, min(n, s[0] + n if s[0] < 0 else s[0]))
            end = max(0, min(n, e[0] + n if e[0] < 0 else e[0]))
            return ShapeValue(x.values[start:end])
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(s, e, a, st, strict=True):
        if not isinstance(step, int) or step <= 0:
            raise ConversionError("Slice with a negative or dynamic step")
        big = 1 << 62
        index[_axis(axis, x.dim())] = slice(
            None if start == 0 else start,
            None if isinstance(end, int) and end >= big else end,
            None if step == 1 else step,
        )
    return x[tuple(index)]


@_op("Reshape", shape_aware=True)
def _reshape(node: Node, device: torch.device, x: Any, shape: Any) -> Any:
    sizes = _ints(shape, "Reshape shape")
    if _is_shape(x):
        if sizes in ([-1], [len(x.values)]) or (sizes == [] and len(x.values) == 1):
            return ShapeValue(list(x.values), scalar=sizes == [])
        x = _tensor(x, device)
    if not node.attr("allowzero", 0):
        sizes = [x.shape[i] if (isinstance(v, int) and v == 0) else v for i, v in enumerate(sizes)]
    return x.reshape(sizes)


@_op("Flatten")
def _flatten(node: Node, device: torch.device, x: Any) -> Any:
    axis = _axis(node.attr("axis", 1), x.dim())
    lead = math.prod(x.shape[:axis]) if axis else 1
    return x.reshape(lead, -1)


@_op("Expand", shape_aware=True)
def _expand(node: Node, device: torch.device, x: Any, shape: Any) -> Any:
    sizes = _ints(shape, "Expand shape")
    x = _tensor(x, device)
    out_shape = torch.broadcast_shapes(tuple(x.shape), tuple(sizes))
    return x.expand(out_shape)


@_op("Tile", shape_aware=True)
def _tile(node: Node, device: torch.device, x: Any, repeats: Any) -> Any:
    return _tensor(x, device).repeat(*_ints(repeats, "Tile repeats"))


@_op("Transpose")
def _transpose(node: Node, device: torch.device, x: Any) -> Any:
    perm = node.attr("perm") or list(reversed(range(x.dim())))
    return x.permute(*perm)


@_op("Where", shape_aware=True)
def _where(node: Node, device: torch.device, cond: Any, a: Any, b: Any) -> Any:
    if _is_shape(cond) and _is_shape(a) and _is_shape(b):
        return _shape_elementwise(lambda c, x, y: x if c else y, [cond, a, b])
    cond, a, b = (_tensor(v, device) for v in (cond, a, b))
    return torch.where(cond.to(torch.bool), a, b)


@_op("ConstantOfShape", shape_aware=True)
def _constant_of_shape(node: Node, device: torch.device, shape: Any) -> Any:
    sizes = _ints(shape, "ConstantOfShape shape")
    value = node.attr("value")
    if value is None:
        return torch.zeros(sizes, dtype=node.compute, device=device)
    fill = torch.from_numpy(np.asarray(value).reshape(-1)[:1].copy())
    small = len(sizes) == 1 and type(sizes[0]) is int and sizes[0] <= _SMALL_CONSTANT
    if fill.dtype == torch.int64 and small:  # e.g. a run of 1s for a reduced shape: sizes
        return ShapeValue([int(fill.item())] * sizes[0])
    dtype = node.compute if fill.dtype == torch.float32 else fill.dtype
    return torch.full(sizes, fill.item(), dtype=dtype, device=device)


@_op("Range", shape_aware=True)
def _range(node: Node, device: torch.device, start: Any, limit: Any, delta: Any) -> Any:
    if all(_is_shape(v) for v in (start, limit, delta)):
        bounds = (
            _scalar(start, "Range start"),
            _scalar(limit, "Range limit"),
            _scalar(delta, "Range delta"),
        )
        if all(type(v) is int for v in bounds):
            values = range(*bounds)
            if len(values) <= _SMALL_CONSTANT:  # e.g. axes: kept as sizes, not data
                return ShapeValue(list(values))
        return torch.arange(*bounds, dtype=torch.int64, device=device)
    raise ConversionError("Range over computed (non-shape) values")


@_op("CumSum", shape_aware=True)
def _cumsum(node: Node, device: torch.device, x: Any, axis: Any) -> Any:
    x = _tensor(x, device)
    dim = _axis(_scalar(axis, "CumSum axis"), x.dim())
    if node.attr("reverse", 0):
        x = x.flip(dim)
    out = torch.cumsum(x, dim=dim)
    if node.attr("exclusive", 0):
        out = out - x
    return out.flip(dim) if node.attr("reverse", 0) else out


@_op("Trilu", shape_aware=True)
def _trilu(node: Node, device: torch.device, x: Any, k: Any = None) -> Any:
    diagonal = _scalar(k, "Trilu k") if k is not None else 0
    return torch.triu(x, diagonal) if node.attr("upper", 1) else torch.tril(x, diagonal)


@_op("Split", shape_aware=True)
def _split(node: Node, device: torch.device, x: Any, split: Any = None) -> Any:
    axis = _axis(node.attr("axis", 0), x.dim())
    if split is not None:
        sizes: Any = _ints(split, "Split sizes")
    elif node.attr("split") is not None:
        sizes = list(node.attr("split"))
    else:
        parts = node.attr("num_outputs") or len(node.outputs)
        sizes = -(-x.shape[axis] // parts)
    return tuple(torch.split(x, sizes, dim=axis))


@_op("Pad", shape_aware=True)
def _pad(
    node: Node,
    device: torch.device,
    x: Any,
    pads: Any = None,
    value: Any = None,
    axes: Any = None,
) -> Any:
    x = _tensor(x, device)
    p = _ints(pads, "Pad pads") if pads is not None else list(node.attr("pads"))
    axes_list = _ints(axes, "Pad axes") if axes is not None else list(range(x.dim()))
    n = len(axes_list)
    per_axis = {_axis(a, x.dim()): (p[i], p[i + n]) for i, a in enumerate(axes_list)}
    flat: list[Any] = []
    for dim in reversed(range(x.dim())):
        flat.extend(per_axis.get(dim, (0, 0)))
    mode = node.attr("mode", "constant")
    fill = 0.0
    if value is not None:
        fill = float(_scalar(value, "Pad value")) if _is_shape(value) else value.item()
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise ConversionError(f"Pad mode '{mode}'")
    if torch_mode == "constant":
        return F.pad(x, flat, value=fill)
    while len(flat) > 2 and flat[-2:] == [0, 0]:
        flat = flat[:-2]  # torch pads only the last dimensions in these modes
    return F.pad(x, flat, mode=torch_mode)


@_op("MatMul")
def _matmul(node: Node, device: torch.device, a: Any, b: Any) -> Any:
    return torch.matmul(a, b)


@_op("Gemm")
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


def _conv_padding(node: Node, x: Any, kernel: list[int]) -> tuple[Any, list[int]]:
    """Apply ONNX padding (``pads``/``auto_pad``); return the input and symmetric padding."""
    spatial = len(kernel)
    strides = node.attr("strides") or [1] * spatial
    dilations = node.attr("dilations") or [1] * spatial
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for i in range(spatial):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, large = total // 2, total - total // 2
            begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
            pads_begin.append(begin)
            pads_end.append(end)
    elif auto_pad == "VALID":
        pads_begin = pads_end = [0] * spatial
    else:
        pads = node.attr("pads") or [0] * (2 * spatial)
        pads_begin, pads_end = list(pads[:spatial]), list(pads[spatial:])
    if pads_begin == pads_end:
        return x, pads_begin
    return F.pad(x, _torch_pads(pads_begin, pads_end)), [0] * spatial


def _torch_pads(begin: Sequence[Any], end: Sequence[Any]) -> list[Any]:
    """ONNX per-axis (begin..., end...) pads of the spatial axes -> ``F.pad``'s order (last
    axis first, (begin, end) pairs)."""
    flat: list[Any] = []
    for i in reversed(range(len(begin))):
        flat.extend((begin[i], end[i]))
    return flat


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@_op("Conv")
def _conv(node: Node, device: torch.device, x: Any, w: Any, b: Any = None) -> Any:
    spatial = w.dim() - 2
    kernel = node.attr("kernel_shape") or list(w.shape[2:])
    x, padding = _conv_padding(node, x, kernel)
    return _CONV[spatial](
        x,
        w,
        b,
        stride=node.attr("strides") or 1,
        padding=padding,
        dilation=node.attr("dilations") or 1,
        groups=node.attr("group", 1),
    )


@_op("ConvTranspose")
def _conv_transpose(node: Node, device: torch.device, x: Any, w: Any, b: Any = None) -> Any:
    spatial = w.dim() - 2
    pads = node.attr("pads") or [0] * (2 * spatial)
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or node.attr("output_shape"):
        raise ConversionError("ConvTranspose with auto_pad SAME or output_shape")
    if list(pads[:spatial]) != list(pads[spatial:]):
        raise ConversionError("ConvTranspose with asymmetric pads")
    return _CONV_T[spatial](
        x,
        w,
        b,
        stride=node.attr("strides") or 1,
        padding=list(pads[:spatial]),
        output_padding=node.attr("output_padding") or 0,
        groups=node.attr("group", 1),
        dilation=node.attr("dilations") or 1,
    )


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@_op("MaxPool")
def _max_pool(node: Node, device: torch.device, x: Any) -> Any:
    kernel = list(node.attr("kernel_shape"))
    spatial = len(kernel)
    pads = node.attr("pads") or [0] * (2 * spatial)
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ConversionError("MaxPool with auto_pad SAME")
    padding = list(pads[:spatial])
    if padding != list(pads[spatial:]) or any(
        2 * p > k for p, k in zip(padding, kernel, strict=True)
    ):
        x = F.pad(x, _torch_pads(pads[:spatial], pads[spatial:]), value=float("-inf"))
        padding = [0] * spatial
    return _MAX_POOL[spatial](
        x,
        kernel,
        stride=node.attr("strides") or 1,
        padding=padding,
        dilation=node.attr("dilations") or 1,
        ceil_mode=bool(node.attr("ceil_mode", 0)),
    )


@_op("AveragePool")
def _avg_pool(node: Node, device: torch.device, x: Any) -> Any:
    kernel = list(node.attr("kernel_shape"))
    spatial = len(kernel)
    pads = node.attr("pads") or [0] * (2 * spatial)
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ConversionError("AveragePool with auto_pad SAME")
    if any(d != 1 for d in node.attr("dilations") or []):
        raise ConversionError("AveragePool with dilations")
    padding = list(pads[:spatial])
    if padding != list(pads[spatial:]) or any(
        2 * p > k for p, k in zip(padding, kernel, strict=True)
    ):
        # torch pools take symmetric padding of at most half the kernel: pad explicitly.
        if node.attr("ceil_mode", 0):
            raise ConversionError("AveragePool with ceil_mode and asymmetric or large pads")
        flat = _torch_pads(pads[:spatial], pads[spatial:])
        pool = _AVG_POOL[spatial]
        stride = node.attr("strides") or 1
        summed = pool(F.pad(x, flat), kernel, stride=stride)
        if node.attr("count_include_pad", 0):
            return summed
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        return summed / pool(F.pad(ones, flat), kernel, stride=stride)
    return _AVG_POOL[spatial](
        x,
        kernel,
        stride=node.attr("strides") or 1,
        padding=list(pads[:spatial]),
        ceil_mode=bool(node.attr("ceil_mode", 0)),
        count_include_pad=bool(node.attr("count_include_pad", 0)),
    )


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: Node, device: torch.device, x: Any) -> Any:
    dims = tuple(range(2, x.dim()))
    if node.op_type == "GlobalAveragePool":
        return x.mean(dim=dims, keepdim=True)
    return x.amax(dim=dims, keepdim=True)


@_op("BatchNormalization")
def _batch_norm(
    node: Node, device: torch.device, x: Any, scale: Any, bias: Any, mean: Any, var: Any
) -> Any:
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, node.attr("epsilon", 1e-5))


@_op("InstanceNormalization")
def _instance_norm(node: Node, device: torch.device, x: Any, scale: Any, bias: Any) -> Any:
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.attr("epsilon", 1e-5))


@_op("LayerNormalization")
def _layer_norm(node: Node, device: torch.device, x: Any, scale: Any, bias: Any = None) -> Any:
    axis = _axis(node.attr("axis", -1), x.dim())
    shape = tuple(x.shape[axis:])
    eps = node.attr("epsilon", 1e-5)
    extra = len(node.outputs) > 1 and any(node.outputs[1:])
    if not extra and scale.dim() == len(shape) and (bias is None or bias.dim() == len(shape)):
        return F.layer_norm(x, shape, scale, bias, eps)
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(var + eps)
    out = (x - mean) * inv_std * scale
    out = out + bias if bias is not None else out
    if not extra:
        return out
    # Mean and InvStdDev have the stash type (float32 by default, ONNX's 1).
    stash = torch_dtype(node.attr("stash_type", 1), node.compute)
    return out, mean.to(stash), inv_std.to(stash)


@_op("RMSNormalization")
def _rms_norm(node: Node, device: torch.device, x: Any, scale: Any) -> Any:
    axis = _axis(node.attr("axis", -1), x.dim())
    shape = tuple(x.shape[axis:])
    eps = node.attr("epsilon", 1e-5)
    if scale.dim() == len(shape):
        return F.rms_norm(x, shape, scale, eps)
    dims = tuple(range(axis, x.dim()))
    return x * torch.rsqrt((x * x).mean(dim=dims, keepdim=True) + eps) * scale


@_op("Softmax", "LogSoftmax")
def _softmax(node: Node, device: torch.device, x: Any) -> Any:
    axis = node.attr("axis", -1)
    fn = F.softmax if node.op_type == "Softmax" else F.log_softmax
    return fn(x, dim=axis)


_REDUCE = {
    "ReduceMean": torch.mean,
    "ReduceSum": torch.sum,
    "ReduceMax": torch.amax,
    "ReduceMin": torch.amin,
    "ReduceProd": None,
    "ReduceL2": None,
    "ReduceSumSquare": None,
    "ReduceLogSumExp": None,
}


@_op(*_REDUCE, shape_aware=True)
def _reduce(node: Node, device: torch.device, x: Any, axes: Any = None) -> Any:
    x = _tensor(x, device)
    if axes is not None:
        dims = _ints(axes, f"{node.op_type} axes")
    else:
        dims = list(node.attr("axes") or [])
    keep = bool(node.attr("keepdims", 1))
    if not dims:
        if node.attr("noop_with_empty_axes", 0):
            return x
        dims = list(range(x.dim()))
    dim = tuple(_axis(d, x.dim()) for d in dims)
    name = node.op_type
    if name == "ReduceProd":
        out = x
        for d in sorted(dim, reverse=True):
            out = torch.prod(out, dim=d, keepdim=keep)
        return out
    if name == "ReduceL2":
        return torch.sqrt(torch.sum(x * x, dim=dim, keepdim=keep))
    if name == "ReduceSumSquare":
        return torch.sum(x * x, dim=dim, keepdim=keep)
    if name == "ReduceLogSumExp":
        return torch.logsumexp(x, dim=dim, keepdim=keep)
    fn = _REDUCE[name]
    assert fn is not None
    return fn(x, dim=dim, keepdim=keep)


@_op("ArgMax", "ArgMin")
def _argmax(node: Node, device: torch.device, x: Any) -> Any:
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    dim = _axis(node.attr("axis", 0), x.dim())
    keep = bool(node.attr("keepdims", 1))
    if node.attr("select_last_index", 0):
        return x.shape[dim] - 1 - fn(x.flip(dim), dim=dim, keepdim=keep)
    return fn(x, dim=dim, keepdim=keep)


@_op("TopK", shape_aware=True)
def _topk(node: Node, device: torch.device, x: Any, k: Any) -> Any:
    values, indices = torch.topk(
        _tensor(x, device),
        _scalar(k, "TopK k"),
        dim=node.attr("axis", -1),
        largest=bool(node.attr("largest", 1)),
        sorted=bool(node.attr("sorted", 1)),
    )
    return values, indices


@_op("Einsum")
def _einsum(node: Node, device: torch.device, *xs: Any) -> Any:
    return torch.einsum(node.attr("equation"), *xs)


@_op("Gelu")
def _gelu(node: Node, device: torch.device, x: Any) -> Any:
    return F.gelu(x, approximate=node.attr("approximate", "none"))


@_op("Clip", shape_aware=True)
def _clip(node: Node, device: torch.device, x: Any, low: Any = None, high: Any = None) -> Any:
    x = _tensor(x, device)
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    low = _tensor(low, device) if low is not None else None
    high = _tensor(high, device) if high is not None else None
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


@_op("LeakyRelu")
def _leaky_relu(node: Node, device: torch.device, x: Any) -> Any:
    return F.leaky_relu(x, node.attr("alpha", 0.01))


@_op("Elu")
def _elu(node: Node, device: torch.device, x: Any) -> Any:
    return F.elu(x, node.attr("alpha", 1.0))


@_op("Selu")
def _selu(node: Node, device: torch.device, x: Any) -> Any:
    alpha, gamma = (
        node.attr("alpha", 1.67326319217681884765625),
        node.attr("gamma", 1.05070102214813232421875),
    )
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@_op("HardSigmoid")
def _hard_sigmoid(node: Node, device: torch.device, x: Any) -> Any:
    return torch.clamp(node.attr("alpha", 0.2) * x + node.attr("beta", 0.5), 0.0, 1.0)


@_op("HardSwish")
def _hard_swish(node: Node, device: torch.device, x: Any) -> Any:
    return F.hardswish(x)


@_op("Softplus")
def _softplus(node: Node, device: torch.device, x: Any) -> Any:
    return F.softplus(x)


@_op("PRelu")
def _prelu(node: Node, device: torch.device, x: Any, slope: Any) -> Any:
    return torch.where(x < 0, x * slope, x)


@_op("Attention")
def _attention(
    node: Node,
    device: torch.device,
    q: Any,
    k: Any,
    v: Any,
    mask: Any = None,
    past_key: Any = None,
    past_value: Any = None,
    nonpad: Any = None,
) -> Any:
    if nonpad is not None:
        raise ConversionError("Attention with nonpad_kv_seqlen")
    if node.attr("softcap", 0.0) or node.attr("qk_matmul_output_mode", 0):
        raise ConversionError("Attention with softcap or qk_matmul_output_mode")
    if node.attr("left_window_size", -1) not in (-1, None) or node.attr(
        "right_window_size", -1
    ) not in (-1, None):
        raise ConversionError("Attention with a sliding window")
    three_d = q.dim() == 3
    if three_d:
        qh, kvh = node.attr("q_num_heads"), node.attr("kv_num_heads")
        batch = q.shape[0]
        q = q.reshape(batch, q.shape[1], qh, -1).transpose(1, 2)
        k = k.reshape(batch, k.shape[1], kvh, -1).transpose(1, 2)
        v = v.reshape(batch, v.shape[1], kvh, -1).transpose(1, 2)
    if past_key is not None:
        k = torch.cat([past_key, k], dim=2)
        v = torch.cat([past_value, v], dim=2)
    is_causal = bool(node.attr("is_causal", 0))
    if is_causal and (mask is not None or past_key is not None):
        # Causal mask aligned after the past keys (top-left without a past, as ONNX does),
        # added to the user's mask.
        q_len, kv_len = q.shape[2], k.shape[2]
        offset = past_key.shape[2] if past_key is not None else 0
        rows = torch.arange(q_len, device=q.device).unsqueeze(1) + offset
        allowed = torch.arange(kv_len, device=q.device).unsqueeze(0) <= rows
        causal = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~allowed, float("-inf")
        )
        if mask is None:
            mask = causal
        elif mask.dtype == torch.bool:
            mask = mask & allowed
        else:
            mask = mask + causal
        is_causal = False
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        is_causal=is_causal,
        scale=node.attr("scale"),
        enable_gqa=q.shape[1] != k.shape[1],
    )
    if three_d:
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
    if len(node.outputs) > 1:
        return (out, k, v)[: len(node.outputs)]
    return out


@_op("RotaryEmbedding")
def _rotary(
    node: Node,
    device: torch.device,
    x: Any,
    cos: Any,
    sin: Any,
    position_ids: Any = None,
) -> Any:
    interleaved = bool(node.attr("interleaved", 0))
    four_d = x.dim() == 4
    original = x.shape
    if four_d:
        x = x.transpose(1, 2)  # [B, S, H, D]
    else:
        heads = node.attr("num_heads")
        if not heads:
            raise ConversionError("RotaryEmbedding on 3-D input without num_heads")
        x = x.reshape(x.shape[0], x.shape[1], heads, -1)
    dim = node.attr("rotary_embedding_dim", 0) or x.shape[-1]
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    rotate, keep = x[..., :dim], x[..., dim:]
    if interleaved:
        x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
    else:
        x1, x2 = rotate[..., : dim // 2], rotate[..., dim // 2 :]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rotated = torch.stack([real, imag], dim=-1).reshape(rotate.shape)
    else:
        rotated = torch.cat([real, imag], dim=-1)
    out = torch.cat([rotated, keep], dim=-1)
    return out.transpose(1, 2) if four_d else out.reshape(original)


# --------------------------------------------------------------------------------------------
# Capability
# --------------------------------------------------------------------------------------------

_MIN_OPSET = {"Softmax": 13, "LogSoftmax": 13, "Split": 13, "Squeeze": 1, "Unsqueeze": 1}


def node_support(node: ir.Node, opset: int) -> str | None:
    """``None`` when ``node`` converts, else the reason it does not."""
    domain = node.domain or ""
    if domain not in ("", "ai.onnx"):
        return f"domain '{domain}' ops are not converted to torch ({node.op_type})"
    for attr in node.attributes.values():
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return f"{node.op_type} has a subgraph (control flow is not converted)"
    if node.op_type not in OPS:
        return f"{node.op_type} is not in our ONNX->torch op mapping (docs/gpu.md lists it)"
    if opset < _MIN_OPSET.get(node.op_type, 1):
        return f"{node.op_type} before opset {_MIN_OPSET[node.op_type]} (other axis semantics)"
    for value in [*node.inputs, *node.outputs]:
        if value is None or value.dtype is None:
            continue
        if value.dtype not in _DTYPES:
            return f"{node.op_type} uses element type {value.dtype.name}"
    if node.op_type == "Cast" and "to" in node.attributes:
        to = ir.DataType(node.attributes["to"].as_int())
        if to not in _DTYPES:
            return f"Cast to {to.name}"
    if node.op_type in ("MaxPool",) and len(node.outputs) > 1 and node.outputs[1].name:
        return "MaxPool with an Indices output"
    if node.op_type == "Dropout" and len(node.outputs) > 1:
        return "Dropout with a mask output"
    return _feature_support(node)


def _const_bool(value: ir.Value | None) -> bool | None:
    """A constant boolean input's value, ``None`` when it is not a constant."""
    if value is None or value.const_value is None:
        return None
    return bool(np.asarray(value.const_value.numpy()).reshape(-1)[0])


def _feature_support(node: ir.Node) -> str | None:
    """Features of mapped ops that the op functions do not express (checked per node)."""
    op = node.op_type

    def attr(name: str, default: Any = None) -> Any:
        a = node.attributes.get(name)
        return default if a is None else a.value

    for value in [*node.inputs, *node.outputs]:
        kind = value.type if value is not None else None
        if kind is not None and not isinstance(kind, ir.TensorType):
            return f"{op} on a {type(kind).__name__} (sequences/optionals)"
    named_outputs = [bool(v.name) for v in node.outputs]
    if op == "BatchNormalization" and (attr("training_mode", 0) or any(named_outputs[1:])):
        return "BatchNormalization with training_mode=1 (batch statistics)"
    training = node.inputs[2] if op == "Dropout" and len(node.inputs) > 2 else None
    if training is not None and _const_bool(training) is not False:
        return "Dropout with a training_mode input that is not a constant false"
    if op == "Attention":
        if any(named_outputs[3:]):
            return "Attention with a qk_matmul_output output"
        if len(node.inputs) > 6 and node.inputs[6] is not None:
            return "Attention with nonpad_kv_seqlen"
        if attr("softcap", 0.0) or attr("qk_matmul_output_mode", 0):
            return "Attention with softcap or qk_matmul_output_mode"
        if attr("left_window_size", -1) != -1 or attr("right_window_size", -1) != -1:
            return "Attention with a sliding window"
    if op in ("MaxPool", "AveragePool") and attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"{op} with auto_pad SAME"
    if op == "ConvTranspose" and (
        attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or attr("output_shape")
    ):
        return "ConvTranspose with auto_pad SAME or output_shape"
    if op == "AveragePool" and any(d != 1 for d in attr("dilations") or []):
        return "AveragePool with dilations"
    if op == "GatherND" and attr("batch_dims", 0):
        return "GatherND with batch_dims > 0"
    return None


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


def _python_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name) or "x"
    if base[0].isdigit() or keyword.iskeyword(base):
        base = "v_" + base
    out, i = base, 1
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


class OnnxGraphModule(torch.nn.Module):
    """Runs an ONNX graph with torch ops (see the module doc); built by :func:`to_torch`."""

    def __init__(self, model: ir.Model, compute: torch.dtype) -> None:
        super().__init__()
        graph = model.graph
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        self.compute = compute
        self.input_names = [v.name or "" for v in graph.inputs]
        self.arg_names: list[str] = list(self.input_names)
        self.output_names = [v.name or "" for v in graph.outputs]
        self.input_float = [v.dtype == ir.DataType.FLOAT for v in graph.inputs]
        self.output_float = [v.dtype == ir.DataType.FLOAT for v in graph.outputs]
        self._constants: dict[str, ShapeValue] = {}
        self._buffers_by_value: dict[str, str] = {}
        taken: set[str] = set()
        for name, value in graph.initializers.items():
            if name in self.input_names:
                continue  # an initializer that is also an input: the input wins
            tensor = value.const_value
            if tensor is None:
                raise ConversionError(f"initializer {name} has no data")
            array = tensor.numpy()
            if array.dtype == np.int64 and array.ndim <= 1 and array.size <= _SMALL_CONSTANT:
                self._constants[name] = ShapeValue(
                    [int(v) for v in array.reshape(-1)], scalar=array.ndim == 0
                )
                continue
            data = torch.from_numpy(np.array(array, copy=True))
            if data.dtype == torch.float32:
                data = data.to(compute)
            attr = _python_name(name, taken)
            self.register_buffer(attr, data)
            self._buffers_by_value[name] = attr
        self._nodes: list[Node] = []
        for node in graph:
            reason = node_support(node, opset)
            if reason is not None:
                raise ConversionError(f"node {node.name}: {reason}")
            attrs = {k: _attr_value(a) for k, a in node.attributes.items()}
            self._nodes.append(
                Node(
                    op_type=node.op_type,
                    attrs=attrs,
                    inputs=[v.name or "" if v is not None else "" for v in node.inputs],
                    outputs=[v.name or "" for v in node.outputs],
                    opset=opset,
                    compute=compute,
                )
            )

    def run_graph(self, args: Sequence[Any]) -> tuple[Any, ...]:
        """Run the graph on the inputs in graph order (``forward`` calls this)."""
        device = args[0].device if args else torch.device("cpu")
        for buffer in self.buffers():
            device = buffer.device
            break
        env: dict[str, Any] = dict(self._constants)
        for name, attr in self._buffers_by_value.items():
            env[name] = getattr(self, attr)
        for name, is_float, value in zip(self.input_names, self.input_float, args, strict=True):
            env[name] = (
                value.to(self.compute) if is_float and value.dtype != self.compute else value
            )
        for node in self._nodes:
            fn = OPS[node.op_type]
            inputs = [env[name] if name else None for name in node.inputs]
            # Trailing absent optional inputs are dropped; interior ones stay None.
            while inputs and inputs[-1] is None:
                inputs.pop()
            if node.op_type not in _SHAPE_AWARE:
                inputs = [_tensor(v, device) if v is not None else None for v in inputs]
            result = fn(node, device, *inputs)
            if isinstance(result, tuple):
                for name, value in zip(node.outputs, result, strict=False):
                    if name:
                        env[name] = value
            else:
                env[node.outputs[0]] = result
        outputs = []
        for name, is_float in zip(self.output_names, self.output_float, strict=True):
            value = _tensor(env[name], device)
            outputs.append(value.to(torch.float32) if is_float else value)
        return tuple(outputs)


def named_forward(cls: type, names: Sequence[str]) -> type:
    """A subclass of ``cls`` whose ``forward`` takes one named argument per input.

    ``forward(a, b)`` calls ``self.run_graph([a, b])``; named arguments let ``torch.export``'s
    ``dynamic_shapes`` be keyed by name. ``names`` must be Python identifiers (see
    :func:`python_names`).
    """
    params = ", ".join(names)
    source = f"def forward(self, {params}):\n    return self.run_graph([{params}])\n"
    scope: dict[str, Any] = {}
    exec(source, scope)
    return type(cls.__name__, (cls,), {"forward": scope["forward"]})


def python_names(names: Sequence[str]) -> list[str]:
    """Distinct Python identifiers for tensor names (``input.1`` -> ``input_1``)."""
    taken: set[str] = {"self"}
    return [_python_name(name or "x", taken) for name in names]


def to_torch(model: ir.Model, compute: torch.dtype = torch.float32) -> OnnxGraphModule:
    """An ``nn.Module`` running ``model``'s main graph; ``forward(<inputs>) -> tuple``.

    ``forward`` takes one named argument per graph input (names made Python-safe, in graph
    order: ``module.arg_names``), so ``torch.export``'s ``dynamic_shapes`` can be keyed by them.

    Raises:
        ConversionError: a node has no mapping (the message names it and says why).
    """
    names = python_names([v.name or "" for v in model.graph.inputs])
    module: OnnxGraphModule = named_forward(OnnxGraphModule, names)(model, compute)
    module.arg_names = names
    return module
